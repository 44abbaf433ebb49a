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
