"""Packed prefix scoring (KV reuse) is exact: it equals one forward per prefix prompt."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from stardss.guard.hf.packed import (
    ScoreStats,
    common_prefix_len,
    packed_token_count,
    score_naive,
    score_packed,
    tokenize,
)
from stardss.star.chunk import word_cuts
from tests.helpers import tokenizer as demo_tokenizer

SAFE, UNSAFE = 5, 6  # any two ids: the random model has no idea what they mean
WORDS = ["the", "cat", "sat", "on", "a", "mat", "naïve", "café", "東京", "😀", "ü", "ß", "ñ",
         "Ωμέγα", "∑", "≈", "½", "hello", "world!!", "...", ",,", "informa", "tion", "don't",
         "x", "12345", "-", "—", "«quoted»", "tab\there", "C++", "a\u200bb", "e\u0301"]
SEPS = [" ", " ", " ", "  ", "\t", "\n", "\n\n", " \n ", "\u3000", "\r\n"]


def render(prompt: str, response: str) -> str:
    # Llama-Guard-shaped: instructions, then the conversation, then more instructions, ending
    # at the decision position.
    return ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: check the Agent "
            f"message.\n\nUser: {prompt}\n\nAgent: {response}\n\nEND CONVERSATION\nAnswer safe or"
            " unsafe.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def render_merging(prompt: str, response: str) -> str:
    # The tail starts with letters, so the response's last characters merge with it.
    return f"<|begin_of_text|>User: {prompt}\nAgent: {response}tion ok? verdict:"


def make_responses(n: int, seed: int, lo: int = 25, hi: int = 80) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        text = "".join(rng.choice(WORDS) + rng.choice(SEPS) for _ in range(k))
        out.append(rng.choice(["", " ", "\n"]) + text)
    return out


def make_groups(responses, render_fn=render, size=5):
    groups = []
    for i, r in enumerate(responses):
        prompt = ["How do I do it?", "Explain «this» 東京 now", "tell me\tmore"][i % 3]
        groups.append([render_fn(prompt, r[:c]) for c in word_cuts(r, size)])
    return groups


def tiny_lm(arch: str = "llama", attn: str | None = None, seed: int = 0, **kw):
    import transformers

    vocab = len(demo_tokenizer())
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  initializer_range=0.1, pad_token_id=None, bos_token_id=0, eos_token_id=1)
    common.update(kw)
    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM"),
           "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
           "granite": ("GraniteConfig", "GraniteForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}[arch]
    if arch == "gemma2":
        common.update(head_dim=16, query_pre_attn_scalar=16)
    if arch == "qwen3":
        common.update(head_dim=16)
    cfg = getattr(transformers, cls[0])(**common)
    if attn is not None:
        cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return getattr(transformers, cls[1])(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_lm()


@pytest.fixture(scope="module")
def groups():
    g = make_groups(make_responses(30, seed=1))
    assert sum(len(x) for x in g) >= 300
    return g


@pytest.fixture(scope="module")
def naive(model, tok, groups):
    flat = [t for g in groups for t in g]
    return score_naive(model, tok, flat, SAFE, UNSAFE, 16)


def test_packed_equals_naive_at_every_batch_size(model, tok, groups, naive):
    assert naive.std() > 0.05, "the random guard's scores should spread, or the check is vacuous"
    results = {}
    for bs in (1, 3, 16):
        packed = np.concatenate(score_packed(model, tok, groups, SAFE, UNSAFE, bs))
        diff = np.abs(packed - naive).max()
        print(f"batch {bs}: {len(naive)} prefixes, max |packed - naive| = {diff:.3g}")
        assert diff <= 1e-4
        results[bs] = packed
    assert np.abs(results[1] - results[3]).max() <= 1e-6
    assert np.abs(results[1] - results[16]).max() <= 1e-6


def test_packed_independent_of_group_order(model, tok, groups):
    ref = score_packed(model, tok, groups, SAFE, UNSAFE, 16)
    perm = list(range(len(groups)))
    random.Random(3).shuffle(perm)
    shuffled = score_packed(model, tok, [groups[i] for i in perm], SAFE, UNSAFE, 16)
    for j, i in enumerate(perm):
        assert shuffled[j].shape == ref[i].shape
        assert np.abs(shuffled[j] - ref[i]).max() <= 1e-6


def test_naive_independent_of_batch_and_padding_side(model, tok, groups, naive):
    flat = [t for g in groups for t in g][:80]
    one = score_naive(model, tok, flat, SAFE, UNSAFE, 1)
    assert np.abs(one - naive[:80]).max() <= 1e-6
    old = tok.padding_side
    try:
        tok.padding_side = "left" if old == "right" else "right"
        flipped = score_naive(model, tok, flat, SAFE, UNSAFE, 7)
    finally:
        tok.padding_side = old
    assert np.abs(flipped - one).max() <= 1e-6


def test_naive_matches_plain_unbatched_forward(model, tok, groups, naive):
    """The reference itself: a single unpadded forward, softmax over the two label logits."""
    flat = [t for g in groups for t in g]
    for i in (0, 7, len(flat) - 1):
        ids = torch.tensor([tokenize(tok, [flat[i]])[0]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        p = torch.softmax(logits[[SAFE, UNSAFE]], dim=0)[0].item()
        assert abs(p - naive[i]) <= 1e-5


def test_eager_and_sdpa_agree(tok, groups, naive):
    eager = tiny_lm(attn="eager")
    sub = groups[:8]
    flat = [t for g in sub for t in g]
    packed = np.concatenate(score_packed(eager, tok, sub, SAFE, UNSAFE, 16))
    naive_eager = score_naive(eager, tok, flat, SAFE, UNSAFE, 16)
    assert np.abs(packed - naive_eager).max() <= 1e-4
    assert np.abs(naive_eager - naive[: len(flat)]).max() <= 1e-4


def test_bpe_merge_across_the_cut(model, tok):
    prompt = "what is it"
    responses = ["the informa", "some informa tion here informa", "東京 ü informa😀 x",
                 "don't   stop\n\nthe cat sat"]
    groups = []
    merged = 0
    head, tail = render_merging(prompt, "").split("tion ok?")[0], "tion ok? verdict:"
    for r in responses:
        cuts = list(range(1, len(r) + 1))  # every character: cuts inside words too
        texts = [render_merging(prompt, r[:c]) for c in cuts]
        groups.append(texts)
        for c, text in zip(cuts, texts):
            whole = tokenize(tok, [text])[0]
            split = tokenize(tok, [head + r[:c]])[0] + tokenize(tok, [tail])[0]
            merged += whole != split
    assert merged > 0, "the construction should make the tail merge with the response's end"
    flat = [t for g in groups for t in g]
    naive = score_naive(model, tok, flat, SAFE, UNSAFE, 8)
    packed = np.concatenate(score_packed(model, tok, groups, SAFE, UNSAFE, 8))
    print(f"{merged} prefixes merge across the cut; max diff {np.abs(packed - naive).max():.3g}")
    assert np.abs(packed - naive).max() <= 1e-4


def test_degenerate_groups(model, tok):
    """Empty groups, single prompts, duplicate prefixes, a prefix whose ids are a prefix of the
    base's, a prefix sharing nothing with its base."""
    base = render("q", "one two three four")
    groups = [
        [],
        [base],
        [base, base],
        [base[:-5], base],  # ids of the first are (likely) a strict prefix of the base ids
        ["zzz unrelated text", "<|begin_of_text|>another thing entirely"],
        [render("q", "one"), render("q", "one"), base],
    ]
    flat = [t for g in groups for t in g]
    naive = score_naive(model, tok, flat, SAFE, UNSAFE, 4)
    for bs in (1, 4):
        out = score_packed(model, tok, groups, SAFE, UNSAFE, bs)
        assert [len(x) for x in out] == [len(g) for g in groups]
        assert np.abs(np.concatenate(out) - naive).max() <= 1e-4


def test_token_accounting(model, tok, groups):
    flat = [t for g in groups for t in g]
    ids = [tokenize(tok, g) for g in groups]
    naive_tokens = sum(len(x) for g in ids for x in g)
    expected_packed = 0
    for g in ids:
        base = g[-1]
        expected_packed += len(base)
        for x in g[:-1]:
            lcp = 0
            while lcp < min(len(x), len(base)) and x[lcp] == base[lcp]:
                lcp += 1
            assert common_prefix_len(x, base) == lcp
            expected_packed += len(x) - min(lcp, len(x) - 1)
    s_naive, s_packed = ScoreStats(), ScoreStats()
    score_naive(model, tok, flat, SAFE, UNSAFE, 16, stats=s_naive)
    score_packed(model, tok, groups, SAFE, UNSAFE, 16, stats=s_packed)
    print(f"tokens: naive {s_naive.tokens}, packed {s_packed.tokens} "
          f"({s_naive.tokens / s_packed.tokens:.2f}x fewer)")
    assert s_naive.tokens == naive_tokens
    assert s_packed.tokens == expected_packed == packed_token_count(ids)
    assert s_packed.tokens < s_naive.tokens
    assert s_naive.prompts == s_packed.prompts == len(flat)
    assert s_packed.padded_tokens >= s_packed.tokens


def test_small_cache_budget_windows_are_exact(model, tok, groups, naive):
    """Responses processed in several windows (bounded KV memory) give the same scores."""
    packed = np.concatenate(score_packed(model, tok, groups, SAFE, UNSAFE, 16,
                                         max_cache_tokens=300))
    assert np.abs(packed - naive).max() <= 1e-4


@pytest.mark.parametrize("arch,kw", [
    ("mistral", dict(sliding_window=None)),
    ("mistral", dict(sliding_window=96)),  # sequences longer than the window: naive fallback
    ("gemma2", dict(sliding_window=4096)),  # ShieldGemma's architecture (eager, softcapping)
    ("granite", dict()),  # Granite Guardian's (logit/residual scaling)
    ("qwen3", dict()),  # Qwen3Guard's
])
def test_other_architectures(tok, arch, kw):
    lm = tiny_lm(arch, **kw)
    sub = make_groups(make_responses(6, seed=5, lo=20, hi=50))
    flat = [t for g in sub for t in g]
    naive = score_naive(lm, tok, flat, SAFE, UNSAFE, 8)
    stats = ScoreStats()
    packed = np.concatenate(score_packed(lm, tok, sub, SAFE, UNSAFE, 8, stats=stats))
    diff = np.abs(packed - naive).max()
    print(f"{arch} {kw}: max diff {diff:.3g}, fallback {stats.fallback_prompts}")
    assert naive.std() > 0.01
    assert diff <= 1e-4
    if kw.get("sliding_window") == 96:
        assert stats.fallback_prompts > 0


def test_bfloat16_runs_and_stays_close(tok, groups):
    lm = tiny_lm().to(torch.bfloat16)
    sub = groups[:4]
    flat = [t for g in sub for t in g]
    naive = score_naive(lm, tok, flat, SAFE, UNSAFE, 8)
    packed = np.concatenate(score_packed(lm, tok, sub, SAFE, UNSAFE, 8))
    assert packed.dtype == np.float64
    assert np.abs(packed - naive).max() <= 0.1  # bf16 rounding differs between the two paths


def test_multi_position_reads_match_naive(model, tok, groups):
    """Reading several positions of one sequence (teacher-forced multi-step verdicts)."""
    from stardss.guard.hf.packed import naive_reads, packed_reads

    ids = [tokenize(tok, g) for g in groups[:6]]
    rng = random.Random(7)
    reads = [[sorted(rng.sample(range(len(x) // 2, len(x)), 3)) for x in g] for g in ids]
    packed = packed_reads(model, ids, SAFE, UNSAFE, 5, reads=reads)
    naive = naive_reads(model, [x for g in ids for x in g], SAFE, UNSAFE, 5,
                        reads=[r for g in reads for r in g])
    flat = [p for g in packed for p in g]
    assert all(a.shape == (3,) for a in flat)
    assert max(np.abs(a - b).max() for a, b in zip(flat, naive)) <= 1e-4
    x, r = ids[0][0], reads[0][0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([x])).logits[0, r].double()
    p = torch.softmax(logits[:, [SAFE, UNSAFE]], dim=-1)[:, 0].numpy()
    assert np.abs(p - naive[0]).max() <= 1e-5


# --------------------------------------------------------------------------------------------
# HFCausalGuard over the families' tiny stand-ins (real templates, random weights)

FAMILIES = [("llama_guard", "3-1b"), ("llama_guard", "3-8b"), ("llama_guard", "4"),
            ("granite_guardian", "3.0"),
            ("granite_guardian", "3.1"), ("granite_guardian", "3.3"), ("shieldgemma", None),
            ("wildguard", None), ("qwen3guard", None), ("nemoguard", None)]


def _sharpen(path: str, seed: int, std: float = 0.08) -> str:
    """Re-draw the stand-in's weights larger, so its P(safe) spreads (checks are not vacuous)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    lm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory):
    from stardss.testing import guards as tiny

    root = tmp_path_factory.mktemp("families")
    out = {}
    for kind, variant in FAMILIES:
        path = tiny.build_tiny_guard(kind, root / f"{kind}-{variant}", hidden_size=32, layers=2,
                                     heads=2, variant=variant)
        out[(kind, variant)] = _sharpen(path, seed=1)
    return out


def _family_items():
    from stardss.guard.base import ScoreRequest

    out = []
    # Hundreds of prefixes per family: 24 responses cut every 2 words.
    for i, r in enumerate(make_responses(24, seed=11, lo=12, hi=30)):
        prompt = ["How do I bake bread?", "Écris un poème 🌊", "tell me\tmore"][i % 3]
        out.append(ScoreRequest(f"r{i}", prompt, r, word_cuts(r, 2)))
    return out


def _guard(path, kind, **kw):
    from stardss.config.schema import GuardrailConfig
    from stardss.guard.registry import build_guardrail

    return build_guardrail(GuardrailConfig(kind=kind, name_or_path=path, device="cpu", **kw))


@pytest.mark.parametrize("kind,variant", FAMILIES)
def test_causal_guard_packed_equals_naive(family_folders, kind, variant):
    from stardss.guard.base import Guardrail

    path = family_folders[(kind, variant)]
    items = _family_items()
    packed_guard = _guard(path, kind, mode="packed", batch_size=4)
    naive_guard = _guard(path, kind, mode="naive", batch_size=3)
    assert isinstance(packed_guard, Guardrail)
    assert packed_guard.name == f"{kind}:{path}"
    packed = packed_guard.score_prefixes(items)
    naive = naive_guard.score_prefixes(items)
    assert [len(p) for p in packed] == [len(it.cuts) for it in items]
    assert all(p.dtype == np.float64 for p in packed)
    a, b = np.concatenate(packed), np.concatenate(naive)
    diff = np.abs(a - b).max()
    print(f"{kind} {variant}: {len(a)} prefixes, max diff {diff:.3g}, P(safe) std {b.std():.3f}, "
          f"tokens packed {packed_guard.stats.tokens} vs naive {naive_guard.stats.tokens}")
    assert b.std() > 0.01 and len(a) >= 200
    assert diff <= 1e-4
    assert packed_guard.stats.tokens < naive_guard.stats.tokens
    # score() (one forward per response) agrees with the prefix scores
    it = items[0]
    direct = packed_guard.score(it.prompt, [it.response[:c] for c in it.cuts])
    assert np.abs(np.asarray(direct) - packed[0]).max() <= 1e-4
    assert packed_guard.fingerprint == naive_guard.fingerprint


def test_wildguard_score_is_the_marginal_over_forced_answers(family_folders):
    """P(safe) = sum over (request, refusal) answers of P(answers) * P(safe | answers),
    computed here one unbatched forward per branch."""
    path = family_folders[("wildguard", None)]
    g = _guard(path, "wildguard", mode="packed")
    assert g.branched
    prompt, response = "How do I pick a lock?", "First, get a tension wrench 🔧 and"
    total = 0.0
    for br in g.format.branches(prompt, response):
        ids = tokenize(g.tokenizer, [br.text])[0]
        with torch.no_grad():
            logits = g.model(input_ids=torch.tensor([ids])).logits[0].double()
        pair = torch.softmax(logits[:, [g.safe_id, g.unsafe_id]], dim=-1)[:, 0]
        w = 1.0
        for off, label in br.steps:
            pos = len(tokenize(g.tokenizer, [br.text[:off]])[0]) - 1
            q = pair[pos].item()
            w *= q if label == g.format.safe_label else 1 - q
        total += w * pair[-1].item()
    assert abs(g.score(prompt, [response])[0] - total) <= 1e-6
    forced = g.format.render(prompt, response)  # the teacher-forced single-branch reading
    single = score_naive(g.model, g.tokenizer, [forced], g.safe_id, g.unsafe_id, 1)[0]
    print(f"wildguard marginal {total:.4f} vs forced-answers reading {single:.4f}")


def test_causal_guard_fingerprint_follows_weights(family_folders, tmp_path):
    import shutil

    src = family_folders[("llama_guard", "3-1b")]
    a = _guard(src, "llama_guard", mode="packed")
    b = _guard(src, "llama_guard", mode="naive", batch_size=1)
    assert a.fingerprint == b.fingerprint
    copy = str(tmp_path / "copy")
    shutil.copytree(src, copy)
    assert _guard(copy, "llama_guard").fingerprint != a.fingerprint  # name_or_path differs
    moved = _guard(_sharpen(copy, seed=2), "llama_guard")
    same_name = _guard(copy, "llama_guard")
    assert moved.fingerprint == same_name.fingerprint
    shutil.rmtree(copy)
    shutil.copytree(src, copy)
    assert _guard(copy, "llama_guard").fingerprint != moved.fingerprint  # weights changed back
    assert _guard(src, "llama_guard", categories=["S1"]).fingerprint != a.fingerprint


def test_causal_guard_config_errors(family_folders):
    path = family_folders[("llama_guard", "3-1b")]
    with pytest.raises(ValueError, match="mode"):
        _guard(path, "llama_guard", mode="fast")
    with pytest.raises(ValueError, match="name_or_path"):
        _guard(None, "llama_guard")
    with pytest.raises(ValueError, match="dtype"):
        _guard(path, "llama_guard", dtype="int8")


# --------------------------------------------------------------------------------------------
# star.transform=authors through HFCausalGuard


def _last_logits(guard, ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([guard.model(input_ids=torch.tensor([x])).logits[0, -1] for x in ids])


def _label_heavy(guard, ids: list[list[int]], scale: float = 8.0, lift: float = 6.0) -> None:
    """Make a stand-in answer like a guard: its label rows of the output head scaled up (the
    verdict spreads over prefixes), with a bias that centres them at `lift` over the prompts
    `ids` (the labels top the vocabulary, and both verdicts occur), in float64 so that packed
    and naive agree to ~1e-12 and a top-p cut never flips on rounding. The model is still a
    real one: both scoring modes and the reference run it."""
    lm = guard.model.double()
    head = lm.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=torch.float64)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
        lm.lm_head = new
        means = _last_logits(guard, ids).mean(dim=0)
        for i in (guard.safe_id, guard.unsafe_id):
            new.weight[i] *= scale
            new.bias[i] = lift - scale * means[i]


@pytest.mark.parametrize("kind,variant", [("llama_guard", "3-1b"), ("granite_guardian", "3.1")])
def test_authors_transform_packed_equals_naive_and_hf(family_folders, kind, variant):
    from stardss.config.schema import AuthorsTransformConfig, GuardrailConfig
    from stardss.guard.registry import build_guardrail
    from tests.unit.test_star_transform import hf_processed_probs

    path = family_folders[(kind, variant)]
    cfg = GuardrailConfig(kind=kind, name_or_path=path, device="cpu", mode="packed",
                          batch_size=4)
    authors = AuthorsTransformConfig()
    g = build_guardrail(cfg, authors)
    raw = build_guardrail(cfg)
    assert g.fingerprint != raw.fingerprint  # raw and authors never share a cache entry
    assert raw.fingerprint == _guard(path, kind).fingerprint  # raw keys unchanged
    assert build_guardrail(cfg, AuthorsTransformConfig(top_k=40)).fingerprint != g.fingerprint
    items = _family_items()
    pairs = [(it.prompt, it.response[:c]) for it in items[:4] for c in it.cuts]
    ids = [rows[0][0] for rows in g._rows(pairs)]
    assert g.safe_id in ids[0] and g.unsafe_id in ids[0]
    _label_heavy(g, ids)
    packed = np.concatenate(g.score_prefixes(items))
    g.mode = "naive"
    naive = np.concatenate(g.score_prefixes(items))
    assert np.abs(packed - naive).max() <= 1e-6
    # Not vacuous: cut to exactly 0, exactly 1, and in between.
    print(f"{kind}: {len(packed)} prefixes, {np.mean(packed == 0):.2f} at 0, "
          f"{np.mean(packed == 1):.2f} at 1")
    assert (packed == 0).any() and (packed == 1).any() and ((packed > 0) & (packed < 1)).any()
    # Hugging Face's processors on the stand-in's own logits at the label position, the
    # repetition penalty over the guard prompt's ids (labels in it: the templates name them).
    ref = hf_processed_probs(_last_logits(g, ids), ids, g.safe_id, g.unsafe_id, authors)
    assert np.abs(ref - packed[: len(ref)]).max() <= 1e-6
