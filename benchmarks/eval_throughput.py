"""Benchmark: evaluation generation on the Ray actor pool (stardss.eval.generation).

A compute-bound tiny Llama (hidden 256, 4 layers, random weights) answers 64 prompts x 32 new
tokens, greedy:
- `gen_speedup_2_vs_1`: GenerationPool with 2 actors vs 1, each actor num_cpus=1 (Ray gives it
  one math thread, as separate GPUs would be on a cluster), batch_size 8 (8 batches to deal);
  issue 13's goal >= 1.7. The two runs generate the same batches, so the texts must be equal.
- `batched_vs_single`: one actor, batch_size 32 (length-sorted, left-padded) vs batch_size 1
  (one prompt at a time); goal >= 3.
- `judge_calls_warm`: an OpenAI-compatible judge (a local chat-completions server) judges the
  64 responses twice through one judge cache folder: the second pass must make 0 calls.
Pool starts (model loads) and one warm-up call per pool are outside the timings; each timing
is the median of --repeats calls.

Prints ONE JSON line. Run: .venv/bin/python benchmarks/eval_throughput.py [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from stardss.config.evaluation import GenerationConfig  # noqa: E402
from stardss.demo.config import TinyModelConfig  # noqa: E402
from stardss.demo.model import build_tiny_llama  # noqa: E402
from stardss.demo.tokenizer import train_bpe_tokenizer  # noqa: E402
from stardss.demo.world import corpus  # noqa: E402
from stardss.eval.generation import GenerationPool  # noqa: E402
from stardss.eval.items import EvalItem  # noqa: E402

WORDS = ["how", "do", "I", "make", "a", "safe", "plan", "for", "the", "garden", "tell", "me",
         "about", "rivers", "and", "stones", "write", "story", "quickly", "please"]


def build_model(folder: str, hidden: int, layers: int) -> str:
    tok = train_bpe_tokenizer(corpus(0), 1000)
    tiny = TinyModelConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers,
                           num_heads=max(hidden // 64, 1), vocab_size=len(tok),
                           max_position_embeddings=512)
    build_tiny_llama(tiny, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_items(n: int, seed: int = 0) -> list[EvalItem]:
    """Prompts of 4 to 40 words (lengths vary, as in a real set)."""
    rng = random.Random(seed)
    return [EvalItem("bench", i, f"bench:{i}", "safety",
                     ({"role": "user", "content": " ".join(rng.choices(WORDS,
                                                                       k=rng.randint(4, 40)))},))
            for i in range(n)]


def timed(model_dir: str, gen: GenerationConfig, items: list, repeats: int) -> tuple[float, dict]:
    """Median seconds of pool.generate(items) after a warm-up call, and the texts."""
    with GenerationPool(model_dir, gen, seed=0) as pool:
        pool.start()
        pool.generate(items[:gen.batch_size * gen.actors])  # warm-up: first forwards
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = pool.generate(items)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), {k: g.text for k, g in out.items()}


def measure(args) -> dict:
    if args.quick:
        args.prompts, args.repeats = 32, 1
    folder = os.path.join(tempfile.mkdtemp(prefix="stardss-eval-bench-"), "m")
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's accelerator notice: stdout is JSON
        model_dir = build_model(folder, args.hidden, args.layers)
    items = make_items(args.prompts)
    base = dict(num_cpus=1.0, max_new_tokens=args.new_tokens, timeout_s=600,
                start_timeout_s=300)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one_s, one = timed(model_dir, GenerationConfig(actors=1, batch_size=8, **base), items,
                           args.repeats)
        two_s, two = timed(model_dir, GenerationConfig(actors=2, batch_size=8, **base), items,
                           args.repeats)
        batched_s, _ = timed(model_dir, GenerationConfig(actors=1, batch_size=32, **base), items,
                             args.repeats)
        single_s, _ = timed(model_dir, GenerationConfig(actors=1, batch_size=1, **base), items,
                            args.repeats)
    finally:
        ray.shutdown()
    speedup, batched = one_s / two_s, single_s / batched_s
    return {
        "benchmark": "eval_throughput",
        "model": {"family": "llama", "hidden_size": args.hidden, "layers": args.layers},
        "prompts": len(items), "new_tokens": args.new_tokens, "repeats": args.repeats,
        "seconds": {"actors_1_bs8": round(one_s, 3), "actors_2_bs8": round(two_s, 3),
                    "bs32_1_actor": round(batched_s, 3), "bs1_1_actor": round(single_s, 3)},
        "gen_speedup_2_vs_1": round(speedup, 3),
        "batched_vs_single": round(batched, 3),
        "texts_equal_1_vs_2": one == two,
        "cpu_count": os.cpu_count(),
        "goals": {"gen_speedup_2_vs_1>=1.7": speedup >= 1.7, "batched_vs_single>=3": batched >= 3},
    }


def judge_calls(n: int) -> dict:
    """Requests an OpenAI-compatible judge sends for n responses, cold and with a warm cache."""
    from stardss.config.evaluation import JudgeConfig
    from stardss.eval.judge_cache import JudgeCache
    from stardss.eval.judges import OpenAIJudge
    from tests.http_support import ChatServer, Reply

    items = [EvalItem(set="b", index=i, origin=f"b:{i}", task="safety",
                      messages=({"role": "user", "content": f"request {i}"},)) for i in range(n)]
    responses = [f"response {i}" for i in range(n)]
    with ChatServer(lambda seen: Reply("Safe")) as srv, tempfile.TemporaryDirectory() as cache:
        cfg = JudgeConfig(name="bench", kind="openai", server=srv.server(concurrency=4))
        cold = OpenAIJudge(cfg, JudgeCache(cache))
        cold.judge(items, responses)
        warm = OpenAIJudge(cfg, JudgeCache(cache))  # a new run: a new judge, the same folder
        same = warm.judge(items, responses) == cold.judge(items, responses)
        return {"judge_calls_cold": cold.calls, "judge_calls_warm": warm.calls,
                "judge_verdicts_equal": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    result = measure(args)
    result.update(judge_calls(args.prompts))
    result["goals"]["judge_calls_warm==0"] = result["judge_calls_warm"] == 0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
