"""Benchmark: guardrail actor pool throughput with 1 vs 2 actors (one CPU, one thread each).

A compute-bound model guardrail (a Llama-Guard-3-shaped stand-in, packed scoring) scores the
same requests through `GuardPool` with actors.min = actors.max = 1, then 2. Each actor reserves
one CPU, and Ray gives an actor with num_cpus=1 one intra-op thread, as separate GPUs would
be on a cluster. Reports rows/s for each and `pool_speedup_2_vs_1` (issue 4's goal: >= 1.7).

Prints ONE JSON line. Run: .venv/bin/python benchmarks/pool_scaling.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from benchmarks.star_scoring import make_responses  # noqa: E402
from stardss.config.schema import ActorsConfig, GuardrailConfig, ScoringConfig  # noqa: E402
from stardss.guard.base import ScoreRequest  # noqa: E402
from stardss.guard.pool import GuardPool  # noqa: E402
from stardss.star.chunk import word_cuts  # noqa: E402
from stardss.testing.guards import build_tiny_guard  # noqa: E402


def timed_pool(guard: GuardrailConfig, actors: int, requests: list[ScoreRequest],
               batch_size: int) -> tuple[float, dict]:
    scoring = ScoringConfig(actors=ActorsConfig(min=actors, max=actors, num_cpus=1.0,
                                                batch_size=batch_size),
                            max_in_flight=2, timeout_s=600, start_timeout_s=300)
    with GuardPool([guard], scoring) as pool:
        pool.score(requests[:batch_size * actors])  # warm-up: weights loaded, first forwards
        started = time.perf_counter()
        out = pool.score(requests)
        seconds = time.perf_counter() - started
    return seconds, out


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    """The guard and requests of the pool benchmarks (this one and ray_data_scoring.py)."""
    ap.add_argument("--responses", type=int, default=48)
    ap.add_argument("--words", type=int, default=120)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4, help="responses per pool request")
    ap.add_argument("--quick", action="store_true")


def build_workload(args, prefix: str) -> tuple[GuardrailConfig, list[ScoreRequest]]:
    """A compute-bound Llama-Guard-3-shaped stand-in and word-cut requests (--quick: smaller)."""
    if args.quick:
        args.responses, args.words, args.hidden = 16, 60, 256
    tmp = tempfile.mkdtemp(prefix=prefix)
    path = build_tiny_guard("llama_guard", os.path.join(tmp, "guard"), hidden_size=args.hidden,
                            layers=args.layers, heads=8)
    guard = GuardrailConfig(kind="llama_guard", name_or_path=str(path), mode="packed",
                            batch_size=16, device="cpu")
    pairs = make_responses(args.responses, args.words, seed=0)
    return guard, [ScoreRequest(f"r{i}", p, r, word_cuts(r, 5))
                   for i, (p, r) in enumerate(pairs)]


def measure(args) -> dict:
    """The benchmark's result (a dict) for parsed workload args."""
    guard, requests = build_workload(args, "stardss-pool-bench-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one_s, one = timed_pool(guard, 1, requests, args.batch_size)
        two_s, two = timed_pool(guard, 2, requests, args.batch_size)
    finally:
        ray.shutdown()
    diff = max(float(abs(one[k] - two[k]).max()) for k in one)
    prefixes = sum(len(r.cuts) for r in requests)
    return {
        "benchmark": "pool_scaling",
        "model": {"family": "llama_guard", "hidden_size": args.hidden, "layers": args.layers},
        "responses": len(requests), "prefixes": prefixes, "request_batch": args.batch_size,
        "seconds": {"actors_1": round(one_s, 3), "actors_2": round(two_s, 3)},
        "rows_per_s": {"actors_1": round(len(requests) / one_s, 2),
                       "actors_2": round(len(requests) / two_s, 2)},
        "pool_speedup_2_vs_1": round(one_s / two_s, 3),
        "max_abs_diff_1_vs_2": diff,
        "cpu_count": os.cpu_count(),
        "goals": {"pool_speedup_2_vs_1>=1.7": one_s / two_s >= 1.7},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap)
    print(json.dumps(measure(ap.parse_args())))


if __name__ == "__main__":
    main()
