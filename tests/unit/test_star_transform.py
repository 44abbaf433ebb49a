"""star.transform=authors equals Hugging Face's own logits processors, read out as the authors
do (the two-label softmax of the processed scores), and has the near-binary shape."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stardss.config.schema import AuthorsTransformConfig, GuardrailConfig, JobConfig, StarConfig
from stardss.star.transform import (
    LabelReader,
    authors_probs,
    guard_transform,
    raw_probs,
    transform_fingerprint,
)

SAFE, UNSAFE = 7, 11
V = 1000
AUTHORS = AuthorsTransformConfig()  # 1.2, 0.2, 50, 0.9


def hf_processed_probs(logits: torch.Tensor, contexts, safe_id: int, unsafe_id: int,
                       cfg: AuthorsTransformConfig) -> np.ndarray:
    """The reference: transformers' processors in generate's order (repetition penalty over
    the row's input ids, temperature, top-k, top-p; min_tokens_to_keep=1), one row at a time
    (rows have input sequences of their own lengths), then the authors' read-out
    (star-dss/src/metric/guardrail.py: softmax over the two label scores, index 0)."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty),
                                 TemperatureLogitsWarper(cfg.temperature),
                                 TopKLogitsWarper(cfg.top_k), TopPLogitsWarper(cfg.top_p)])
    out = []
    for row, ctx in zip(logits.double(), contexts):
        ids = torch.tensor([list(ctx)], dtype=torch.long)
        scores = procs(ids, row.unsqueeze(0).clone())
        out.append(torch.softmax(scores[0, [safe_id, unsafe_id]], dim=-1)[0].item())
    return np.asarray(out, dtype=np.float64)


def random_rows(seed: int, n: int = 48):
    """Logits [n, V] with the labels near the top (mostly), at random offsets (so label logits
    of either sign), and contexts of random lengths with or without the label tokens."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, V), generator=gen, dtype=torch.float64) * 2.0
    top = x.max(dim=1).values
    for i in range(n):
        kind = i % 4
        if kind < 3:  # labels on top, apart by a random margin (some far enough to be cut)
            x[i, SAFE] = top[i] + 1.0 + torch.rand((), generator=gen, dtype=torch.float64) * 2
            x[i, UNSAFE] = x[i, SAFE] + (torch.rand((), generator=gen, dtype=torch.float64)
                                         - 0.5) * 3.0
        # kind 3: the labels stay where randn put them (usually both cut)
    x += (torch.rand((n, 1), generator=gen, dtype=torch.float64) - 0.5) * 24.0
    contexts = []
    for i in range(n):
        L = int(torch.randint(1, 300, (), generator=gen))
        ctx = torch.randint(0, V, (L,), generator=gen).tolist()
        if i % 3 == 0:
            ctx += [SAFE, UNSAFE]  # both labels in the prompt (Llama Guard's instructions)
        elif i % 3 == 1:
            ctx += [SAFE]
        else:
            ctx = [t for t in ctx if t not in (SAFE, UNSAFE)]
        contexts.append(ctx)
    return x, contexts


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_authors_equals_hf_processors_on_random_logits(seed):
    x, ctx = random_rows(seed)
    ours = authors_probs(x, ctx, SAFE, UNSAFE, AUTHORS)
    ref = hf_processed_probs(x, ctx, SAFE, UNSAFE, AUTHORS)
    both_cut = np.isnan(ref)
    assert np.abs(ours[~both_cut] - ref[~both_cut]).max() <= 1e-6
    # Every case occurs: a label cut (exactly 0 or 1), both kept, both cut (NaN there).
    assert (ours == 0).any() and (ours == 1).any()
    assert ((ours > 0) & (ours < 1) & ~both_cut).any()
    assert both_cut.any()
    # Both cut: the authors' read-out is NaN; ours is the value before the cut.
    tempered = []
    for row, c in zip(x, ctx):
        pen = row.clone()
        seen = torch.tensor(sorted(set(c)))
        s = pen[seen]
        pen[seen] = torch.where(s < 0, s * 1.2, s / 1.2)
        tempered.append(torch.sigmoid((pen[SAFE] - pen[UNSAFE]) / 0.2).item())
    np.testing.assert_allclose(ours[both_cut], np.asarray(tempered)[both_cut], atol=1e-12)


@pytest.mark.parametrize("knobs", [dict(top_k=0), dict(top_p=1.0), dict(repetition_penalty=1.0),
                                   dict(temperature=1.0, top_k=5, top_p=0.5),
                                   dict(repetition_penalty=2.0, temperature=0.7, top_k=3)])
def test_other_knobs_equal_hf(knobs):
    """Knob values off (0 / 1) skip a processor exactly as generate does."""
    cfg = AuthorsTransformConfig(**{**vars(AUTHORS), **knobs})
    x, ctx = random_rows(7)
    ours = authors_probs(x, ctx, SAFE, UNSAFE, cfg)
    # TopKLogitsWarper rejects top_k=0 (generate leaves it out): top_k = V keeps everything.
    ref = hf_processed_probs(x, ctx, SAFE, UNSAFE,
                             AuthorsTransformConfig(**{**vars(cfg), "top_k": cfg.top_k or V}))
    ok = ~np.isnan(ref)
    assert ok.sum() >= len(ref) // 2
    assert np.abs(ours[ok] - ref[ok]).max() <= 1e-6


def test_everything_off_is_raw():
    off = AuthorsTransformConfig(repetition_penalty=1.0, temperature=1.0, top_k=0, top_p=1.0)
    x, ctx = random_rows(3)
    np.testing.assert_allclose(authors_probs(x, ctx, SAFE, UNSAFE, off),
                               raw_probs(x, SAFE, UNSAFE), atol=1e-15)


def test_top_p_cutting_one_label_gives_exactly_0_or_1():
    x = torch.full((2, V), -30.0, dtype=torch.float64)
    x[0, SAFE], x[0, UNSAFE] = 5.0, 5.0 - 1.0  # after /0.24: P(unsafe) ~ 0.016 <= 0.1: cut
    x[1, SAFE], x[1, UNSAFE] = 5.0 - 1.0, 5.0
    ctx = [[SAFE, UNSAFE, 3], [SAFE, UNSAFE, 3]]
    ours = authors_probs(x, ctx, SAFE, UNSAFE, AUTHORS)
    assert ours.tolist() == [1.0, 0.0]
    assert hf_processed_probs(x, ctx, SAFE, UNSAFE, AUTHORS).tolist() == [1.0, 0.0]


def two_label_logits(p_raw: np.ndarray, level: float) -> torch.Tensor:
    """Rows whose label logits sit at `level` with raw two-label P(safe) = p_raw, the rest of
    the vocabulary 30 below (no mass there)."""
    d = np.log(p_raw) - np.log1p(-p_raw)
    x = torch.full((len(p_raw), V), level - 30.0, dtype=torch.float64)
    x[:, SAFE] = torch.tensor(level + d / 2)
    x[:, UNSAFE] = torch.tensor(level - d / 2)
    return x


def test_near_binary_shape():
    """The issue's shape: with both labels in the prompt and positive label logits, the value is
    sigmoid(d / 0.24) of the raw logit difference d, cut to 0 / 1 by top-p outside ~[0.37,
    0.63]. It depends on the raw logits, not on P alone: negative label logits are multiplied
    by the penalty (sigmoid(6 d): steeper), and labels absent from the prompt are not
    penalised (sigmoid(5 d))."""
    p = np.array([0.2, 0.35, 0.40, 0.50, 0.60, 0.65, 0.8])
    ctx = [[SAFE, UNSAFE, 1, 2]] * len(p)
    pos = authors_probs(two_label_logits(p, 12.0), ctx, SAFE, UNSAFE, AUTHORS)
    assert pos[0] == 0.0 and pos[1] == 0.0 and pos[-1] == 1.0 and pos[-2] == 1.0
    d = np.log(p) - np.log1p(-p)
    np.testing.assert_allclose(pos[2:5], 1 / (1 + np.exp(-d[2:5] / 0.24)), atol=1e-9)
    assert abs(pos[2] - 0.16) < 0.005 and pos[3] == pytest.approx(0.5, abs=1e-12)
    assert abs(pos[4] - 0.84) < 0.005
    # The same P with negative label logits: a steeper ramp (0.40 -> 0.081 -> cut to 0).
    neg = authors_probs(two_label_logits(p, -12.0), ctx, SAFE, UNSAFE, AUTHORS)
    assert neg[2] == 0.0 and neg[4] == 1.0 and neg[3] == pytest.approx(0.5, abs=1e-12)
    # Labels not in the prompt: no penalty, sigmoid(5 d) (0.40 -> 0.116, still kept).
    free = authors_probs(two_label_logits(p, 12.0), [[1, 2]] * len(p), SAFE, UNSAFE, AUTHORS)
    np.testing.assert_allclose(free[2], 1 / (1 + math.exp(-d[2] / 0.2)), atol=1e-9)
    assert 0.1 < free[2] < pos[2]
    # raw is untouched by all of it
    np.testing.assert_allclose(raw_probs(two_label_logits(p, -12.0), SAFE, UNSAFE), p,
                               atol=1e-12)


def test_reader_and_config_plumbing():
    x, ctx = random_rows(5, n=8)
    np.testing.assert_array_equal(LabelReader(SAFE, UNSAFE)(x), raw_probs(x, SAFE, UNSAFE))
    reader = LabelReader(SAFE, UNSAFE, AUTHORS)
    assert reader.needs_context and not LabelReader(SAFE, UNSAFE).needs_context
    np.testing.assert_array_equal(reader(x, ctx), authors_probs(x, ctx, SAFE, UNSAFE, AUTHORS))
    with pytest.raises(ValueError, match="token ids"):
        reader(x)
    assert guard_transform(StarConfig()) is None
    assert guard_transform(StarConfig(transform="authors")) == AUTHORS
    assert transform_fingerprint(None) == ()
    assert transform_fingerprint(AuthorsTransformConfig(temperature=1)) == transform_fingerprint(
        AuthorsTransformConfig(temperature=1.0))
    assert transform_fingerprint(AUTHORS) != transform_fingerprint(
        AuthorsTransformConfig(top_p=0.95))


def test_authors_needs_a_causal_guard():
    from stardss.config.fields import ConfigError
    from stardss.config.validate import validate
    from stardss.guard.registry import build_guardrail

    job = JobConfig(guardrails=[GuardrailConfig(kind="llama_guard", name_or_path="x"),
                                GuardrailConfig(kind="rules")],
                    star=StarConfig(transform="authors"))
    with pytest.raises(ConfigError, match=r"^star.transform: authors needs .*guardrails\[1\] "
                                          r"\(kind=rules\).*granite_guardian, llama_guard"):
        validate(job)
    validate(JobConfig(guardrails=job.guardrails))  # raw: fine
    with pytest.raises(ValueError, match="kind 'rules' cannot score with star.transform=authors"):
        build_guardrail(GuardrailConfig(kind="rules"), AUTHORS)
    with pytest.raises(ConfigError, match="star.authors.top_p"):
        validate(JobConfig(star=StarConfig(authors=AuthorsTransformConfig(top_p=0.0))))
    with pytest.raises(ConfigError, match="star.transform"):
        validate(JobConfig(star=StarConfig(transform="sampled")))
