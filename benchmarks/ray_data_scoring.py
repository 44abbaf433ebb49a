"""Benchmark: guardrail scoring through GuardPool.stream vs Ray Data map_batches (actor pool).

The design question (issue): examples flow read -> chunk -> guardrail pool -> STAR weights ->
Ray Train shards. Ray Data (`map_batches` with an actor pool feeding `get_dataset_shard`) is the
first choice; an explicit actor group with a bounded queue is acceptable where it measures
better. stardss built the explicit group (GuardPool + a bounded StepFeed actor); this measures
both on the same work so the choice rests on numbers.

Same compute-bound Llama-Guard-3-shaped stand-in (packed mode, cpu), same requests, 1 and 2
scoring actors each reserving num_cpus=1 (so one intra-op thread each):
  pool     GuardPool.stream consumed as a stream (like scoring.mode=stream). cold = pool start
           (actors + model load) + a full pass; warm = a full pass after a warm-up, on the
           same actors (as pool_scaling.py).
  ray_data from_items(rows) -> map_batches(Scorer, compute=ActorPoolStrategy(size=n),
           num_cpus=1, batch_size=<pool batch>, batch_format="numpy") -> iter_batches, as a
           Train worker reads get_dataset_shard(...).iter_batches. Every execution creates
           its actors anew, so each run is "cold"; run once with default order settings and
           once with execution_options.preserve_order=True, after a small warm-up execution.
Per run: wall, rows/s, time to first result, actor-ready times, keys exactly once, order kept,
max |score - pool warm score|, peak rows ahead of consumption (pool: read from the input but
not yet yielded; ray_data: scored by an actor but not yet consumed; from_items itself puts
every row in the object store up front).

Prints ONE JSON line. Run: .venv/bin/python benchmarks/ray_data_scoring.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from benchmarks.pool_scaling import add_workload_args, build_workload  # noqa: E402
from stardss.config.schema import ActorsConfig, GuardrailConfig, ScoringConfig  # noqa: E402
from stardss.guard.base import ScoreRequest  # noqa: E402
from stardss.guard.pool import GuardPool  # noqa: E402
from stardss.guard.registry import build_guardrail  # noqa: E402


def _probe(actor_self) -> tuple[int, int]:
    import torch
    return os.getpid(), torch.get_num_threads()


class Scorer:
    """The Ray Data UDF: one guardrail per actor, like a GuardActor with one guard."""

    def __init__(self, guard: GuardrailConfig):
        self.guard = build_guardrail(guard)
        self.ready, (self.pid, self.threads) = time.time(), _probe(None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [ScoreRequest(str(k), str(p), str(r), [int(c) for c in cuts])
                 for k, p, r, cuts in zip(batch["key"], batch["prompt"], batch["response"],
                                          batch["cuts"])]
        n = len(items)
        scores = np.empty(n, dtype=object)  # variable-length rows: (n_guards=1, n_cuts)
        for i, s in enumerate(self.guard.score_prefixes(items)):
            scores[i] = np.asarray(s, dtype=np.float64)[None, :]
        return {"key": batch["key"], "scores": scores, "done": np.full(n, time.time()),
                "ready": np.full(n, self.ready), "pid": np.full(n, self.pid),
                "threads": np.full(n, self.threads)}


def consume(results, start: float) -> dict:
    """Drain (key, scores) results; time to first and last result from `start`."""
    keys, scores, first, consumed_at = [], {}, None, []
    for key, arr in results:
        now = time.perf_counter()
        first = first if first is not None else now - start
        keys.append(key)
        scores[key] = arr
        consumed_at.append(time.time())
    wall = time.perf_counter() - start
    return {"keys": keys, "scores": scores, "first": first, "wall": wall, "at": consumed_at}


def summarize(res: dict, requests: list[ScoreRequest], ref: dict | None) -> dict:
    want = [r.key for r in requests]
    out = {"wall_s": round(res["wall"], 3), "rows_per_s": round(len(want) / res["wall"], 2),
           "first_result_s": round(res["first"], 3),
           "keys_exactly_once": sorted(res["keys"]) == sorted(want),
           "order_preserved": res["keys"] == want}
    if ref is not None:
        out["max_abs_diff_vs_pool"] = max(float(np.abs(res["scores"][k] - ref[k]).max())
                                          for k in want if k in res["scores"])
    return out


def wait_cpus_free(timeout_s: float = 60.0) -> None:
    """ray.kill frees an actor's CPU asynchronously; don't charge that to the next run."""
    total, end = ray.cluster_resources().get("CPU", 0), time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < end:
        time.sleep(0.05)


def run_pool(guard: GuardrailConfig, n: int, requests: list[ScoreRequest], bs: int) -> dict:
    scoring = ScoringConfig(actors=ActorsConfig(min=n, max=n, num_cpus=1.0, batch_size=bs),
                            max_in_flight=2, timeout_s=600, start_timeout_s=300)
    ahead = {"read": 0, "yielded": 0, "peak": 0}

    def counted():  # requests read lazily by the pool
        for r in requests:
            ahead["read"] += 1
            yield r

    def stream(pool):
        for item in pool.stream(counted(), total=len(requests)):
            ahead["peak"] = max(ahead["peak"], ahead["read"] - ahead["yielded"])
            ahead["yielded"] += 1
            yield item

    wait_cpus_free()
    t0 = time.perf_counter()
    with GuardPool([guard], scoring) as pool:
        started = time.perf_counter() - t0
        cold = consume(stream(pool), t0)
        pool.score(requests[:bs * n])  # warm-up, as pool_scaling.timed_pool
        ahead.update(read=0, yielded=0, peak=0)
        warm = consume(stream(pool), time.perf_counter())
        probes = ray.get([a.__ray_call__.remote(_probe) for a in pool.actors])
    ref = warm["scores"]
    return {"ref": ref,
            "cold": {**summarize(cold, requests, ref), "actors_ready_s": round(started, 3),
                     "after_actors_ready_s": round(cold["wall"] - started, 3)},
            "warm": {**summarize(warm, requests, ref), "rows_read_ahead_peak": ahead["peak"]},
            "actor_threads": [t for _, t in probes]}


def run_ray_data(guard: GuardrailConfig, n: int, requests: list[ScoreRequest], bs: int,
                 ref: dict | None, preserve_order: bool) -> dict:
    from ray.data import ActorPoolStrategy, DataContext

    wait_cpus_free()
    ctx = DataContext.get_current()  # a Dataset copies the context when it is created
    ctx.execution_options.preserve_order = preserve_order
    rows = [{"key": r.key, "prompt": r.prompt, "response": r.response, "cuts": list(r.cuts)}
            for r in requests]
    t0, t_wall0 = time.perf_counter(), time.time()
    # max_tasks_in_flight_per_actor=2 = the pool's max_in_flight (also Ray's default here)
    compute = ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=2)
    ds = ray.data.from_items(rows).map_batches(
        Scorer, fn_constructor_args=(guard,), compute=compute, num_cpus=1,
        batch_size=bs, batch_format="numpy")
    meta: list[tuple] = []

    def results():
        for b in ds.iter_batches(batch_size=bs, batch_format="numpy", prefetch_batches=1):
            for i in range(len(b["key"])):
                meta.append((b["done"][i], b["ready"][i], int(b["pid"][i]), int(b["threads"][i])))
                yield str(b["key"][i]), np.asarray(b["scores"][i], dtype=np.float64)

    res = consume(results(), t0)
    done = np.array([m[0] for m in meta])
    # rows scored by an actor (batch returned) but not yet consumed, at each consumption
    ahead = max(int((done <= t).sum()) - i for i, t in enumerate(res["at"]))
    ready = sorted({(m[2], m[1]) for m in meta})
    ready_s = [r - t_wall0 for _, r in ready]
    return {**summarize(res, requests, ref),
            "actors_ready_s": [round(r, 3) for r in ready_s],
            "after_actors_ready_s": round(res["wall"] - max(ready_s), 3),
            "actor_pids": [p for p, _ in ready],
            "actor_threads": sorted({m[3] for m in meta}),
            "rows_scored_ahead_peak": ahead, "preserve_order": preserve_order}


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap)
    args = ap.parse_args()
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    guard, requests = build_workload(args, "stardss-raydata-bench-")
    bs = args.batch_size

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        pool, data = {}, {}
        for n in (1, 2):
            p = run_pool(guard, n, requests, bs)
            pool[f"actors_{n}"] = {k: v for k, v in p.items() if k != "ref"}
            run_ray_data(guard, n, requests[:bs * n], bs, None, False)  # warm-up execution
            default = run_ray_data(guard, n, requests, bs, p["ref"], False)
            ordered = run_ray_data(guard, n, requests, bs, p["ref"], True)
            data[f"actors_{n}"] = {"default_order": default, "preserve_order": ordered}
    finally:
        ray.shutdown()

    def ratio(runs: dict, run: str, field: str) -> float:
        return round(runs["actors_1"][run][field] / runs["actors_2"][run][field], 3)

    def per_n(runs: dict, run: str, field: str) -> list:
        return [runs[n][run][field] for n in runs]

    def over_pool(field: str, pool_run: str) -> dict:
        return {n: round(data[n]["default_order"][field] / pool[n][pool_run]["wall_s"], 3)
                for n in data}

    runs = [r for d in data.values() for r in d.values()]
    runs += [r for p in pool.values() for k, r in p.items() if k != "actor_threads"]
    print(json.dumps({
        "benchmark": "ray_data_scoring", "ray": ray.__version__,
        "model": {"family": "llama_guard", "hidden_size": args.hidden, "layers": args.layers},
        "responses": len(requests), "prefixes": sum(len(r.cuts) for r in requests),
        "batch_size": bs, "in_flight_per_actor": 2, "cpu_count": os.cpu_count(),
        "pool": pool, "ray_data": data,
        "notes": {
            "ray_data_actors_new_per_execution": all(set(d["default_order"]["actor_pids"])
                                                     .isdisjoint(d["preserve_order"]["actor_pids"])
                                                     for d in data.values()),
            "order_preserved_actors_1_2": {
                "pool": per_n(pool, "warm", "order_preserved"),
                "ray_data_default": per_n(data, "default_order", "order_preserved"),
                "ray_data_preserve_order": per_n(data, "preserve_order", "order_preserved")},
            "all_keys_exactly_once": all(r["keys_exactly_once"] for r in runs),
            "max_abs_diff_vs_pool": max(r["max_abs_diff_vs_pool"] for r in runs),
            "speedup_2_vs_1": {
                "pool_warm": ratio(pool, "warm", "wall_s"),
                "pool_cold": ratio(pool, "cold", "wall_s"),
                "ray_data": ratio(data, "default_order", "wall_s"),
                "ray_data_after_actors_ready": ratio(data, "default_order",
                                                     "after_actors_ready_s")},
            "ray_data_wall_over_pool_cold_wall": over_pool("wall_s", "cold"),
            "ray_data_wall_over_pool_warm_wall": over_pool("wall_s", "warm"),
            "ray_data_after_actors_ready_over_pool_warm_wall": over_pool("after_actors_ready_s",
                                                                         "warm"),
        },
        "total_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
