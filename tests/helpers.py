"""Small builders shared by tests: the demo tokenizer, a tiny Llama, chat rows."""
from __future__ import annotations

import functools

from stardss.config.schema import TinyModelConfig
from stardss.data.rows import parse_row
from stardss.data.tokenizer import train_bpe_tokenizer
from stardss.data.toyworld import corpus

EXTRA_TEXT = ["naïve café — 東京 😀 ü ß ñ", "tabs\tand\nnewlines  double  spaces", "Ωμέγα ∑ ≈ ½"]


@functools.lru_cache(maxsize=1)
def tokenizer():
    return train_bpe_tokenizer(corpus(0) + EXTRA_TEXT * 20, 700)


def tiny_config(**kw) -> TinyModelConfig:
    base = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, vocab_size=700,
                max_position_embeddings=256)
    base.update(kw)
    return TinyModelConfig(**base)


def chat_row(prompt: str, response: str, index: int = 0):
    return parse_row({"prompt": prompt, "response": response}, "test", index)


def soft_weighted_rows(job) -> list:
    """The job's training rows with seeded random token weights (soft, as STAR gives them),
    so every loss kind trains on weights other than 0 and 1 without a guardrail."""
    import torch

    from stardss.data.quarantine import BadRowSink
    from stardss.run import load_training_data
    from stardss.star.score import unweighted_row

    with BadRowSink("error") as sink:
        data = load_training_data(job, tokenizer(), sink)
    rows = [unweighted_row(e) for e in data.encoded]
    g = torch.Generator().manual_seed(0)
    for r in rows:
        r.weights = torch.rand(len(r.input_ids), generator=g).tolist()
    return rows
