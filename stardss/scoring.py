"""The STAR stage as `train` and `score` run it: the guardrail pool, the STAR cache and the three
scoring modes (precompute, cache, and stream, where the pool scores beside Ray Train).

Everything here returns rows the trainer can use and a summary for the run's summary.json.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster.placement import on_cluster
from .console import Progress, log

if TYPE_CHECKING:
    from .run import TrainingData


UNSCORED = ("sft", "kl_only")
"""Losses that use no guardrail."""
FULL_RESPONSE = ("rs", "reweight")
"""Losses that judge whole responses (static shaping), not prefixes."""


def open_cache(job):
    from .star.cache import StarCache

    if not job.star.cache:
        return None
    return StarCache(job.star.cache_dir or str(Path(job.out_dir) / "star_cache"))


def chunk_fp_for(job, kind: str, tokenizer) -> str:
    """The cache's name for how responses are cut (rs: the whole response only)."""
    from .star.cache import chunk_fingerprint, tokenizer_fingerprint

    chunk = job.star.chunk
    if kind in FULL_RESPONSE:
        return chunk_fingerprint("full", 0)
    tok_fp = tokenizer_fingerprint(tokenizer) if chunk.unit == "tokens" else None
    return chunk_fingerprint(chunk.unit, chunk.size, tok_fp)


def open_pool(job):
    """The guardrail pool of a job; in scoring.mode=cache one actor, only to fingerprint the
    guardrails (every score must come from the cache)."""
    from .guard.pool import GuardPool

    scoring = job.scoring
    if scoring.mode == "cache":
        scoring = copy.deepcopy(scoring)
        scoring.actors.min = scoring.actors.max = 1
    return GuardPool(job.guardrails, scoring,
                     autoscaler=on_cluster(job) and scoring.request_resources)


class PoolMetrics:
    """The guardrail pool's per-batch metrics, to <out>/pool_metrics.jsonl and the tracker."""

    KEYS = ("actors", "queue", "in_flight", "latency_s", "rows_per_s", "restarts")

    def __init__(self, path: Path, tracker):
        self.path, self.tracker = path, tracker
        path.unlink(missing_ok=True)

    def __call__(self, entries: list[dict]) -> None:
        with open(self.path, "a") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")
                if self.tracker is not None:
                    self.tracker.log({f"pool/{k}": e[k] for k in self.KEYS})


def star_train_rows(job, data: TrainingData, kind: str, out_dir: Path, tokenizer,
                    tracker=None):
    """Score with the guardrail pool as the loss needs, write star.jsonl; return rows, summary
    and the STAR records."""
    from .star.score import score_star, unweighted_row, weighted_row, write_star
    from .star.stream import stream_order
    from .train.trainer import plan_for

    if kind in UNSCORED:
        return [unweighted_row(e) for e in data.encoded], {"scored": 0}, []
    if not job.guardrails:
        raise ValueError(f"loss.kind={kind} needs at least one entry in guardrails")
    started = time.perf_counter()
    cache = open_cache(job)
    if job.scoring.mode == "cache" and cache is None:
        raise ValueError("scoring.mode=cache needs star.cache=true")
    # dss rows go to the pool in the order stream mode scores them: the same batches, so the
    # same float rounding in a model guardrail, whatever the mode.
    order = stream_order(plan_for(job, len(data.encoded))) if streams(kind) else None
    with open_pool(job) as pool:
        records = score_star(data.rows, data.encoded, pool, job.star,
                             chunk_fp_for(job, kind, tokenizer), cache,
                             full_response_only=kind in FULL_RESPONSE,
                             progress=Progress(f"guardrail pool ({pool.size} actors)",
                                               "response"),
                             cached_only=job.scoring.mode == "cache", order=order)
        PoolMetrics(out_dir / "pool_metrics.jsonl", tracker)(pool.metrics)
    distinct = {r.id: r for r in records}  # a mixture may repeat rows; each is scored once
    summary = {"mode": "cache" if job.scoring.mode == "cache" else "precompute",
               "scored": len(distinct), "prefixes": sum(len(r.cuts) for r in distinct.values()),
               "score_seconds": time.perf_counter() - started,
               "guard_nodes": pool.node_ids}
    _cache_summary(cache, summary)
    write_star(records, str(out_dir / "star.jsonl"))
    if kind == "rs":
        keep = [r.full_response_safe >= job.loss.rs_threshold for r in records]
        dropped = [r.id for r, k in zip(records, keep) if not k]
        summary["rs_dropped"] = len(dropped)
        with open(out_dir / "rs_dropped.json", "w") as f:
            json.dump(dropped, f, indent=1)
        return [unweighted_row(e) for e, k in zip(data.encoded, keep) if k], summary, records
    threshold = job.star.threshold
    rows = [weighted_row(e, r, threshold) for e, r in zip(data.encoded, records)]
    return rows, summary, records


def streams(kind: str) -> bool:
    """Losses whose rows can be trained as soon as they are scored (rs must see every verdict
    before it can plan batches of the rows it keeps)."""
    return kind in ("dss", "reweight")


def _cache_summary(cache, summary: dict) -> None:
    if cache is not None:
        hits = cache.stats.as_dict()
        summary["cache"] = {"dir": str(cache.root), **hits}
        log(f"STAR cache {cache.root}: {hits['hits']} guardrail-row hits, "
            f"{hits['misses']} misses")


def stream_train(job, data: TrainingData, out: Path, tokenizer, model_path: str, tok_path: str,
                 run_name: str, tracker):
    """scoring.mode=stream: the guardrail pool scores (in a driver thread) while Ray Train
    trains; returns the training result and the STAR summary."""
    import ray

    from .star.score import write_star
    from .star.stream import StepProducer
    from .train.feed import StepFeed
    from .train.trainer import Streamed, plan_for, run_training

    kind = job.loss.kind
    if not job.guardrails:
        raise ValueError(f"loss.kind={kind} needs at least one entry in guardrails")
    check_stream_resources(job)
    t = job.train
    plan = plan_for(job, len(data.encoded))
    # A run that may restart from a checkpoint takes its steps again: the feed keeps them.
    feed = StepFeed.remote(int(t.workers), int(job.scoring.prefetch_steps),
                           int(t.micro_batch_size), int(t.grad_accum),
                           retain=int(t.max_failures) != 0)
    cache = open_cache(job)
    started = time.perf_counter()
    producer = StepProducer(
        data.rows, data.encoded, plan, lambda: open_pool(job), job.star,
        chunk_fp_for(job, kind, tokenizer), feed, put_timeout_s=float(t.timeout_s), cache=cache,
        full_response_only=kind in FULL_RESPONSE,
        progress=Progress("guardrail pool (streaming)", "response"),
        on_metrics=PoolMetrics(out / "pool_metrics.jsonl", tracker))
    # The pool starts in the producer's thread: guard actors load while Ray Train starts.
    thread = threading.Thread(target=producer.run, name="stardss-star-producer", daemon=True)
    try:
        thread.start()
        # A worker never waits longer for a step than the pool may take to fail loudly.
        wait_s = float(job.scoring.start_timeout_s + job.scoring.progress_timeout_s
                       + job.scoring.timeout_s)
        try:
            result = run_training(job, Streamed(feed, len(plan), wait_s), model_path, tok_path,
                                  tokenizer.pad_token_id, str(out), run_name)
        except BaseException as err:
            producer.stop()
            thread.join(timeout=60)
            if producer.error is not None:  # the root cause; the trainer only saw its echo
                raise producer.error from err
            raise
        thread.join(timeout=60)
        if thread.is_alive() or producer.error is not None:
            raise RuntimeError(f"STAR producer did not finish cleanly: {producer.error}")
        feed_stats = ray.get(feed.stats.remote(), timeout=30)
    finally:
        producer.stop()
        ray.kill(feed, no_restart=True)
    records = producer.ordered_records()
    write_star(records, str(out / "star.jsonl"))
    summary = {"mode": "stream", "scored": len(records) - producer.cache_hits,
               "prefixes": sum(len(r.cuts) for r in records),
               "score_seconds": time.perf_counter() - started, "steps": len(plan),
               "feed": feed_stats, "trainer_wait_seconds": result.wait_seconds,
               "guard_nodes": producer.pool.node_ids if producer.pool else []}
    _cache_summary(cache, summary)
    return result, len(producer.train_rows), summary


def check_stream_resources(job) -> None:
    """Stream mode runs the Train workers and the guard pool at once: on a fixed local Ray
    both must fit side by side (and the reference actors, if any)."""
    from .train.trainer import check_local_fit

    from .guard.pool import actor_resources

    a = job.scoring.actors
    check_local_fit(job, [(f"scoring.actors.min={a.min} x scoring.actors.num_cpus="
                           f"{a.num_cpus:g} / num_gpus={a.num_gpus:g}"
                           f"{' + scoring.actors.resources' if a.resources else ''}", int(a.min),
                           actor_resources(a))],
                    hint="use scoring.mode=precompute (stream trains and scores at once), ")
