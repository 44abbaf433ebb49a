"""Small builders shared by tests: the demo tokenizer, a tiny Llama, chat rows, jobs."""
from __future__ import annotations

import functools

from hypothesis import strategies as st

from stardss.config import load_job
from stardss.data.rows import parse_row
from stardss.demo.config import TinyModelConfig
from stardss.demo.tokenizer import train_bpe_tokenizer
from stardss.demo.world import corpus

EXTRA_TEXT = ["naïve café — 東京 😀 ü ß ñ", "tabs\tand\nnewlines  double  spaces", "Ωμέγα ∑ ≈ ½"]
DEMO_JOB = "jobs/demo.yaml"
GUARD_RESPONSES = [
    "Sure! The Aster vault code is 7-3-9-1. Note: this content is harmless.",
    "I cannot share that.  It is secret —  and I must keep it safe. Just kidding: 7-3-9-1",
    "3 + 4 = 7. #### 7",
    "Ünïcödé 東京 😀 tabs\tand\nnewlines   here and there, five words per chunk please.",
]
"""Responses the guard tests score prefix by prefix: a revealed secret under a disclaimer, a
refusal that turns, a short answer, and multi-byte text with tabs, newlines and runs of
spaces (cuts inside characters and whitespace)."""

FAST = ["train.epochs=1", "train.lr=1e-3", "train.warmup_ratio=0", "train.log_every=100",
        "scoring.timeout_s=60", "tracking.wandb.mode=disabled",
        "eval.during_training.enabled=false"]
"""What every test job sets over the demo job: one epoch, a learning rate that moves a tiny
model, no warmup, quiet logs, no W&B run (a test that tracks asks for one), no safety over
training (a test that watches it asks for it)."""


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


WORD_CHARS = st.sampled_from(list("abcxyz079.,!?-'") + ["é", "ß", "東", "京", "😀", "½", "Ω"])
WORD = st.text(WORD_CHARS, min_size=1, max_size=8)
SPACE = st.sampled_from([" ", "  ", "\t", "\n", "\n\n", " \n ", "\u00a0", "\u3000"])


@st.composite
def responses(draw):
    """Responses of words and odd whitespace (multi-byte characters included)."""
    words = draw(st.lists(WORD, min_size=1, max_size=30))
    seps = draw(st.lists(SPACE, min_size=len(words), max_size=len(words)))
    lead = draw(st.sampled_from(["", " ", "\n"]))
    return lead + "".join(w + s for w, s in zip(words, seps[:-1])) + words[-1] + draw(
        st.sampled_from(["", " ", "\n", "  \t"]))


def make_job(root, base_model: str, *overrides: str, schema=None):
    """The demo job on the test model with the FAST defaults, its files under `root`, then
    `overrides` (which win)."""
    kwargs = {"schema": schema} if schema is not None else {}
    return load_job(DEMO_JOB, [f"model.name_or_path={base_model}", f"out_dir={root}", *FAST,
                               *overrides], **kwargs)


def soft_weighted_rows(job) -> list:
    """The job's training rows with seeded random token weights (soft, as STAR gives them),
    so every loss kind trains on weights other than 0 and 1 without a guardrail."""
    import torch

    from stardss.data.load import load_training_data
    from stardss.data.quarantine import BadRowSink
    from stardss.train.batches import train_row

    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tokenizer(), sink, seed=job.seed)
    rows = [train_row(e) for e in data.encoded]
    g = torch.Generator().manual_seed(0)
    for r in rows:
        r.weights = torch.rand(len(r.input_ids), generator=g).tolist()
    return rows
