"""Benchmark: STAR prefix scoring with a Llama-Guard-3-shaped guard on CPU.

Three ways to get P(safe) of every 5-word prefix of 16 responses of ~200 words:
  (a) naive:    one forward per prefix prompt (batched like packed, logits of the last token);
  (b) generate: one greedy `generate` call per prefix prompt, max_new_tokens = the label's
                token count, P(safe) from the raw logits it returns (the authors' code path,
                without sampling);
  (c) packed:   one pass over each full response, prefixes run only their differing tail
                over the cached KV states (stardss.guard.hf.packed).

`--stream` instead compares the STAR cost per response of Qwen3Guard-Stream (one forward over
the rendered conversation, a verdict at every token: stardss.guard.hf.stream) with packed
prefix scoring of a causal guard (the Llama-Guard-3 stand-in) of the same size (hidden size,
layers, heads, vocabulary), on the same responses and cuts: tokens and seconds per response.

Prints ONE JSON line. Run: .venv/bin/python benchmarks/star_scoring.py [--quick] [--stream]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # keeps DeepSpeed (if imported) quiet on stdout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stardss.config.schema import GuardrailConfig  # noqa: E402
from stardss.guard.hf.packed import ScoreStats, score_naive, score_packed, tokenize  # noqa: E402
from stardss.guard.registry import build_guardrail  # noqa: E402
from stardss.star.chunk import word_cuts  # noqa: E402
from stardss.testing.guards import build_tiny_guard  # noqa: E402

WORDS = ("the a to of and in is that for it with as was on be by this are from at or an which "
         "first then mix flour water knead dough oven minutes heat pan server password script "
         "terminal run install package network file open close secure account email phishing "
         "Sure here how step careful safety professional contact help sorry cannot however "
         "naïve café résumé Straße 東京 数学 Привет señora 🙂 ⚠️ 42 3.14 2FA (probably) "
         "don't it's we'll \"quoted\" [brackets] {braces} <tags> — … ;").split()
PROMPTS = ["How do I bake bread at home?", "Explain how to secure my email account.",
           "Écris-moi un poème sur la mer 🌊", "What is the fastest way into a locked server?"]


def make_responses(n: int, words: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = words + rng.randint(-10, 10)
        parts = []
        for j in range(k):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choices([" ", "\n", "  ", ". "], weights=[85, 5, 5, 5])[0])
        out.append((PROMPTS[i % len(PROMPTS)], "".join(parts).strip()))
    return out


def run_generate(guard, texts: list[str], n_new: int) -> tuple[np.ndarray, int]:
    """One greedy generate per prompt; P(safe) from the raw logits of the label step."""
    model, tok = guard.model, guard.tokenizer
    probs, tokens = [], 0
    for text in texts:
        ids = torch.tensor([tokenize(tok, [text])[0]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id)
        logits = out.logits[0][0].double()  # the first generated token = the label
        probs.append(torch.sigmoid(logits[guard.safe_id] - logits[guard.unsafe_id]).item())
        tokens += ids.shape[1] + n_new - 1
    return np.asarray(probs), tokens


def _finite(x):
    """NaN (a method not run) -> null, so the line is strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def stream_vs_packed(args) -> dict:
    """STAR cost per response: Qwen3Guard-Stream vs packed scoring of a same-size causal guard."""
    from stardss.guard.base import ScoreRequest
    from stardss.testing.stream_guard import build_tiny_stream_guard

    with tempfile.TemporaryDirectory() as tmp:
        size = {"hidden_size": args.hidden, "layers": args.layers}
        common = {"batch_size": args.batch_size, "device": "cpu", "dtype": "float32"}
        guards = {
            "packed": build_guardrail(GuardrailConfig(
                kind="llama_guard", mode="packed", **common,
                name_or_path=build_tiny_guard("llama_guard", os.path.join(tmp, "lg3"), **size))),
            "stream": build_guardrail(GuardrailConfig(
                kind="qwen3guard_stream", trust_remote_code=True, **common,
                name_or_path=build_tiny_stream_guard(os.path.join(tmp, "qgs"), **size))),
        }
        pairs = make_responses(args.responses, args.words, seed=0)
        requests = [ScoreRequest(f"r{i}", p, r, word_cuts(r, args.chunk))
                    for i, (p, r) in enumerate(pairs)]
        for g in guards.values():  # warm-up
            g.score_prefixes(requests[:1])
        best, stats, scores = {k: float("inf") for k in guards}, {}, {}
        for _ in range(args.repeats):  # interleaved, best kept
            for name, g in guards.items():
                g.stats = ScoreStats()
                t = time.perf_counter()
                scores[name] = g.score_prefixes(requests)
                best[name] = min(best[name], time.perf_counter() - t)
                stats[name] = g.stats
        n = len(requests)
        resp_tokens = [len(tokenize(guards["stream"].tokenizer, [r.response])[0])
                       for r in requests]
        # Each guard's input without the response: its template's and the prompt's share.
        empty = [ScoreRequest(r.key, r.prompt, "", [0]) for r in requests]
        overhead = {"packed": np.mean([len(x) for x in tokenize(guards["packed"].tokenizer, [
                        guards["packed"].render(r.prompt, "") for r in requests])]),
                    "stream": np.mean([len(x[0]) for x in guards["stream"]._rows(empty)])}
        result = {
            "benchmark": "star_scoring_stream",
            "models": {k: {"class": type(g.model).__name__, "hidden_size": args.hidden,
                           "layers": args.layers, "vocab": len(g.tokenizer),
                           "params": sum(p.numel() for p in g.model.parameters())}
                       for k, g in guards.items()},
            "responses": n, "prefixes_per_response": round(sum(len(r.cuts) for r in requests)
                                                           / n, 1),
            "chunk_words": args.chunk, "batch_size": args.batch_size,
            "mean_response_tokens_stream_tokenizer": round(float(np.mean(resp_tokens)), 1),
            "tokens_per_response": {k: round(s.tokens / n, 1) for k, s in stats.items()},
            "input_tokens_without_response": {k: round(float(v), 1) for k, v in overhead.items()},
            "padded_tokens_per_response": {k: round(s.padded_tokens / n, 1)
                                           for k, s in stats.items()},
            "forwards": {k: s.forwards for k, s in stats.items()},
            "seconds_per_response": {k: round(t / n, 4) for k, t in best.items()},
            "stream_over_packed": {
                "tokens": round(stats["stream"].tokens / stats["packed"].tokens, 3),
                "seconds": round(best["stream"] / best["packed"], 3)},
            "all_finite_in_0_1": bool(all(np.all((v >= 0) & (v <= 1)) for s in scores.values()
                                          for v in s)),
            "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--responses", type=int, default=16)
    ap.add_argument("--words", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved timed runs of naive and packed (best kept)")
    ap.add_argument("--repeat-all", action="store_true",
                    help="repeat generate and naive_unbatched too (slow)")
    ap.add_argument("--no-naive-unbatched", dest="naive_unbatched", action="store_false",
                    help="skip the extra reference: naive with batch size 1")
    ap.add_argument("--quick", action="store_true", help="4 responses of 60 words")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--stream", action="store_true",
                    help="Qwen3Guard-Stream vs packed scoring of a same-size causal guard")
    args = ap.parse_args()
    if args.quick:
        args.responses, args.words = 4, 60
    torch.manual_seed(0)
    if args.stream:
        print(json.dumps(_finite(stream_vs_packed(args)), allow_nan=False))
        return

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_tiny_guard("llama_guard", os.path.join(tmp, "lg3"), hidden_size=args.hidden,
                                layers=args.layers)
        guard = build_guardrail(GuardrailConfig(kind="llama_guard", name_or_path=path,
                                                mode="packed", batch_size=args.batch_size,
                                                device="cpu", dtype="float32"))
        build_s = time.perf_counter() - t0
        model, tok, fmt = guard.model, guard.tokenizer, guard.format
        pairs = make_responses(args.responses, args.words, seed=0)
        groups = [[fmt.render(p, r[:c]) for c in word_cuts(r, args.chunk)] for p, r in pairs]
        flat = [t for g in groups for t in g]
        sid, uid, bs = guard.safe_id, guard.unsafe_id, args.batch_size

        # warm-up (allocator, kernels) on a small slice
        score_naive(model, tok, flat[:bs], sid, uid, bs)
        score_packed(model, tok, groups[:1], sid, uid, bs)

        # label length in context: tokens the authors' generate must produce to reach the label
        probe = fmt.render(*pairs[0])
        n_label = max(len(tokenize(tok, [probe + lab])[0]) - len(tokenize(tok, [probe])[0])
                      for lab in (fmt.safe_label, fmt.unsafe_label))
        run_generate(guard, flat[:2], n_label)  # warm-up

        methods = {
            "naive": lambda st: score_naive(model, tok, flat, sid, uid, bs, stats=st),
            "packed": lambda st: np.concatenate(
                score_packed(model, tok, groups, sid, uid, bs, stats=st)),
            "generate": lambda st: run_generate(guard, flat, n_label),
            "naive_unbatched": lambda st: score_naive(model, tok, flat, sid, uid, 1, stats=st),
        }
        if args.skip_generate:
            del methods["generate"]
        if not args.naive_unbatched:
            del methods["naive_unbatched"]
        # Interleaved repeats, best time of each: a slow phase of a shared machine hits all.
        best = {k: float("inf") for k in methods}
        res, stats = {}, {}
        for rep in range(args.repeats):
            for name, fn in methods.items():
                if rep > 0 and name in ("generate", "naive_unbatched") and not args.repeat_all:
                    continue
                st = ScoreStats()
                t = time.perf_counter()
                res[name] = fn(st)
                best[name] = min(best[name], time.perf_counter() - t)
                stats[name] = st
        t_naive, naive, s_naive = best["naive"], res["naive"], stats["naive"]
        t_packed, packed, s_packed = best["packed"], res["packed"], stats["packed"]
        if "generate" in methods:
            t_gen, (gen, gen_tokens) = best["generate"], res["generate"]
        else:
            t_gen, gen, gen_tokens = float("nan"), np.full_like(naive, np.nan), 0
        t_nb = best.get("naive_unbatched", float("nan"))

    token_limit = s_naive.tokens / s_packed.tokens
    speedup = t_naive / t_packed
    result = {
        "benchmark": "star_scoring",
        "model": {"family": "llama_guard", "variant": fmt.variant, "hidden_size": args.hidden,
                  "layers": args.layers, "params": sum(p.numel() for p in model.parameters()),
                  "vocab": len(tok), "dtype": "float32"},
        "responses": len(groups), "prefixes": len(flat), "chunk_words": args.chunk,
        "mean_prompt_tokens": round(s_naive.tokens / len(flat), 1),
        "batch_size": bs, "label_tokens": n_label,
        "seconds": {"naive": round(t_naive, 3), "generate": round(t_gen, 3),
                    "naive_unbatched": round(t_nb, 3),
                    "packed": round(t_packed, 3), "build_and_load": round(build_s, 2)},
        "speedup_vs_naive": round(speedup, 3),
        "speedup_vs_generate": round(t_gen / t_packed, 3),
        "speedup_vs_naive_unbatched": round(t_nb / t_packed, 3),
        "max_abs_diff": float(np.abs(packed - naive).max()),
        "generate_max_abs_diff": float(np.abs(gen - naive).max()),
        "tokens": {"naive": s_naive.tokens, "packed": s_packed.tokens, "generate": gen_tokens,
                   "naive_padded": s_naive.padded_tokens,
                   "packed_padded": s_packed.padded_tokens},
        "forwards": {"naive": s_naive.forwards, "packed": s_packed.forwards,
                     "generate": len(flat) if not args.skip_generate else 0},
        "token_limit": round(token_limit, 3),
        "efficiency": round(speedup / token_limit, 3),
        "efficiency_vs_naive_unbatched": round(t_nb / t_packed / token_limit, 3),
        "tokens_per_s": {"naive": round(s_naive.tokens / t_naive, 1),
                         "packed": round(s_packed.tokens / t_packed, 1),
                         "generate": round(gen_tokens / t_gen, 1) if gen_tokens else None,
                         "packed_effective": round(s_naive.tokens / t_packed, 1)},
        "repeats": args.repeats,
        "prefix_per_s": {"naive": round(len(flat) / t_naive, 2),
                         "packed": round(len(flat) / t_packed, 2),
                         "generate": round(len(flat) / t_gen, 2)},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    result["goals"] = {
        "efficiency>=0.9": result["efficiency"] >= 0.9,
        "speedup_vs_naive>=4.5": result["speedup_vs_naive"] >= 4.5,
        "speedup_vs_generate>=5": bool(result["speedup_vs_generate"] >= 5),  # NaN: False
        "max_abs_diff<=1e-4": result["max_abs_diff"] <= 1e-4,
    }
    print(json.dumps(_finite(result), allow_nan=False))


if __name__ == "__main__":
    main()
