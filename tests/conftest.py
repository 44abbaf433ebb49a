"""Every test: no hub, DeepSpeed on its CPU accelerator, W&B off unless a test asks for it.
Tests under tests/integration/ (real Ray, DeepSpeed, HTTP) are marked `integration`."""
import os
from pathlib import Path

import pytest

# Tests never reach a hub; DeepSpeed picks its CPU accelerator without probing for CUDA.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """A randomly initialised 2-layer Llama and the test tokenizer, as one HF folder (built
    once per test run, for unit and integration tests alike)."""
    from stardss.demo.model import build_tiny_llama
    from tests.helpers import tiny_config, tokenizer

    path = tmp_path_factory.mktemp("base")
    tok = tokenizer()
    build_tiny_llama(tiny_config(), tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
