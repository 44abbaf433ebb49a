"""Qwen3GuardStream: one forward pass per response, per-token risks mapped to STAR cuts by
character offsets (the tiny stand-in: a Qwen3 guard whose model code ships in its folder)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stardss.config.schema import GuardrailConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.registry import build_guardrail
from stardss.star.chunk import word_cuts
from stardss.testing.stream_guard import build_tiny_stream_guard

RESPONSES = [
    "Sure! The Aster vault code is 7-3-9-1. Note: this content is harmless.",
    "I cannot share that.  It is secret —  and I must keep it safe. Just kidding: 7-3-9-1",
    "Ünïcödé 東京 😀 tabs\tand\nnewlines   here and there, naïve café résumé 🙂.",
]
CONTEXT = ({"role": "user", "content": "Hi, who are you?"},
           {"role": "assistant", "content": "A helpful assistant. Ask me anything 🙂"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_stream_guard(tmp_path_factory.mktemp("stream") / "qwen3guard-stream")


def _cfg(folder, **kw):
    return GuardrailConfig(kind="qwen3guard_stream", name_or_path=folder, device="cpu",
                           trust_remote_code=True, batch_size=2, **kw)


@pytest.fixture(scope="module")
def guard(folder):
    return build_guardrail(_cfg(folder))


def _probs_at_last(guard, ids) -> np.ndarray:
    """The model's own risk-level softmax at the last token of `ids` (one row, no padding):
    the verdict a re-score of exactly those tokens gives."""
    with torch.inference_mode():
        out = guard.model(input_ids=torch.tensor([list(ids)]))
    return torch.softmax(out.risk_level_logits[0, -1].double(), -1).numpy()


def _safe(guard, probs, loose=False) -> float:
    names = {v.casefold(): int(k) for k, v in guard.model.response_risk_level_map.items()}
    return probs[names["safe"]] + (probs[names["controversial"]] if loose else 0.0)


def _boundary_cuts(guard, req):
    """(cut, t): response cuts that fall on a guard-token boundary, with the token ending there."""
    (ids, ends, start, lead), = guard._rows([req])
    out = []
    for t in range(len(ids)):
        c = ends[t] - start + lead
        if lead < c <= len(req.response) and (t + 1 == len(ids) or ends[t + 1] > ends[t]):
            out.append((c, t))
    return ids, out


def test_loading_is_refused_without_trust_remote_code(folder):
    cfg = dataclasses.replace(_cfg(folder), trust_remote_code=False)
    with pytest.raises(ValueError, match=r"guardrails\[\.\.\]\.trust_remote_code: true") as err:
        build_guardrail(cfg)
    assert "\n" not in str(err.value)


def test_the_model_is_the_folders_remote_code(guard):
    assert type(guard.model).__name__ == "Qwen3ForGuardModel"
    assert type(guard.model).__module__.startswith("transformers_modules.")
    assert guard.levels == {"safe": 0, "unsafe": 1, "controversial": 2}


@pytest.mark.parametrize("context", [(), CONTEXT])
def test_stream_scores_equal_rescoring_the_truncated_prefix(guard, context):
    """At a cut on a token boundary the stream verdict is the verdict of the model run on the
    guard input cut after that token (causal attention), and of a re-score of the prefix text
    wherever that text tokenises as the full response's first tokens."""
    rescored = 0
    for i, r in enumerate(RESPONSES):
        req = ScoreRequest(f"r{i}", "How do I open the vault?", r, [], context)
        ids, cuts = _boundary_cuts(guard, req)
        assert len(cuts) > 10
        req = dataclasses.replace(req, cuts=[c for c, _ in cuts])
        got = guard.score_prefixes([req])[0]
        want = [_safe(guard, _probs_at_last(guard, ids[: t + 1])) for _, t in cuts]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        for (c, t), g in zip(cuts, got):
            (pids, _, _, _), = guard._rows([dataclasses.replace(req, response=r[:c])])
            if pids[: t + 1] == ids[: t + 1]:
                assert guard.score_prefixes([dataclasses.replace(
                    req, response=r[:c], cuts=[c])])[0][0] == pytest.approx(g, abs=1e-4)
                rescored += 1
    assert rescored > 20
    assert np.ptp(got) > 0.05  # the values differ: a wrong position would be seen


def test_offsets_map_multibyte_characters_to_whole_tokens(guard):
    """A token holding only part of a character's bytes, or straddling a cut, is not in the
    prefix: every character cut reads the last token that ends at or before it."""
    r = "Go 😀 東京 now"
    req = ScoreRequest("mb", "hi", r, list(range(len(r) + 1)))
    (ids, ends, start, lead), = guard._rows([req])
    text, _, _ = guard.layout(req)
    assert text[start : start + len(r)] == r
    emoji = r.index("😀")
    # The byte-level tokens of the emoji: several tokens end right after it.
    assert sum(e == start + emoji + 1 for e in ends) >= 2
    got = guard.score_prefixes([req])[0]
    for c in range(len(r) + 1):
        t = max(i for i, e in enumerate(ends) if e <= start + c)
        assert got[c] == pytest.approx(_safe(guard, _probs_at_last(guard, ids[: t + 1])),
                                       abs=1e-4)
    # The cut between the space and the emoji: the token " \xf0..." straddles it, so it reads
    # the same token as the cut before the space; the cut after the emoji reads its last byte.
    assert got[emoji] == got[emoji - 1]
    last = max(i for i, e in enumerate(ends) if e == start + emoji + 1)
    assert got[emoji + 1] == pytest.approx(
        _safe(guard, _probs_at_last(guard, ids[: last + 1])), abs=1e-4)
    assert got[emoji + 1] != pytest.approx(
        _safe(guard, _probs_at_last(guard, ids[:last])), abs=1e-4)


def test_controversial_strict_and_loose(folder, guard):
    loose = build_guardrail(_cfg(folder, controversial="safe"))
    r = RESPONSES[0]
    req = ScoreRequest("c", "q?", r, word_cuts(r, 2))
    strict_v, loose_v = guard.score_prefixes([req])[0], loose.score_prefixes([req])[0]
    (ids, ends, start, lead), = guard._rows([req])
    for c, s, lv in zip(req.cuts, strict_v, loose_v):
        t = max(i for i, e in enumerate(ends) if e <= start + c - lead)
        p = _probs_at_last(guard, ids[: t + 1])
        assert s == pytest.approx(p[0], abs=1e-4)           # strict: P(Safe)
        assert lv == pytest.approx(p[0] + p[2], abs=1e-4)   # loose: P(Safe) + P(Controversial)
    assert np.all(loose_v >= strict_v) and np.max(loose_v - strict_v) > 1e-3
    assert loose.fingerprint != guard.fingerprint


def test_context_is_rendered_before_the_prompt(guard):
    r = RESPONSES[1]
    plain = ScoreRequest("m", "And now?", r, word_cuts(r, 5))
    multi = dataclasses.replace(plain, context=CONTEXT)
    text, start, _ = guard.layout(multi)
    head = ("<|im_start|>user\nHi, who are you?<|im_end|>\n<|im_start|>assistant\n"
            "A helpful assistant. Ask me anything 🙂<|im_end|>\n<|im_start|>user\nAnd now?"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text == head + r + "<|im_end|>\n" and start == len(head)
    a, b = guard.score_prefixes([plain, multi])
    assert np.abs(a - b).max() > 1e-3  # the earlier turns reach every verdict


def test_score_reads_the_last_response_token(guard):
    req = ScoreRequest("s", "q?", RESPONSES[2], [len(RESPONSES[2])])
    assert guard.score("q?", [RESPONSES[2]])[0] == pytest.approx(
        guard.score_prefixes([req])[0][0], abs=1e-12)
    (ids, ends, start, _), = guard._rows([req])
    t = max(i for i, e in enumerate(ends) if e <= start + len(RESPONSES[2]))
    assert ids[t + 1 :] == guard.tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]


def test_leading_newlines_and_unmappable_responses(guard):
    r = "\n\nHello there"
    req = ScoreRequest("n", "q?", r, [0, 1, 2, len(r)])
    v = guard.score_prefixes([req])[0]
    assert v[0] == v[1] == v[2] != v[3]  # the template drops the newlines: the turn's opening
    bad = ScoreRequest("bad", "q?", "thinking</think>answer", [5])
    with pytest.raises(ValueError, match="row 'bad'"):
        guard.score_prefixes([bad])


def test_fingerprint_covers_options_and_is_stable(folder, guard):
    same = build_guardrail(_cfg(folder))
    bf16 = build_guardrail(_cfg(folder, dtype="bfloat16"))
    assert same.fingerprint == guard.fingerprint
    assert bf16.fingerprint != guard.fingerprint


def test_batching_and_padding_do_not_change_scores(folder, guard):
    reqs = [ScoreRequest(f"b{i}", "q?", r, word_cuts(r, 3)) for i, r in enumerate(RESPONSES * 2)]
    one = build_guardrail(dataclasses.replace(_cfg(folder), batch_size=1)).score_prefixes(reqs)
    many = guard.score_prefixes(reqs)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_a_conversation_longer_than_the_models_positions_is_refused(folder):
    g = build_guardrail(_cfg(folder))
    g.max_tokens = 40
    with pytest.raises(ValueError, match=r"row 'long'.*over the model's 40 positions"):
        g.score_prefixes([ScoreRequest("long", "q?", RESPONSES[0], [len(RESPONSES[0])])])
