"""Fixtures the integration modules share. Each module starts its own Ray session (they differ
in resources and environment); the tiny base model is built once per test run."""
import pytest

from stardss.train.model import build_tiny_llama
from tests.helpers import tiny_config, tokenizer


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """A randomly initialised 2-layer Llama and the test tokenizer, as one HF folder."""
    path = tmp_path_factory.mktemp("base")
    tok = tokenizer()
    build_tiny_llama(tiny_config(), tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
