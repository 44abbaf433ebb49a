"""The STAR stage as `train` and `score` run it: the guardrail pool, the STAR cache and the
three scoring modes (precompute, cache, and stream, where the pool scores beside Ray Train).

All three go through one `star.score.Scorer`, which asks the pool in the same order (the
plan's order of first use), so they give the same weights bit for bit.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..cluster.resources import check_stream_fit, on_cluster
from ..config.schema import ChunkConfig, JobConfig, LossConfig
from ..console import Progress, log
from ..data.load import TrainingData
from ..raytools import get, on_this_node
from ..star.score import Scorer, StarRecord, record_weights, score_requests, write_star
from ..train.batches import TrainRow, plan_for, stream_order, train_row
from ..train.kinds import LossKind
from ..train.spec import TrainingSpec


def open_cache(job: JobConfig):
    from ..star.cache import StarCache

    if not job.star.cache:
        return None
    return StarCache(job.star.cache_dir or str(Path(job.out_dir) / "star_cache"))


def chunk_fingerprint_for(chunk: ChunkConfig, full_response_only: bool, tokenizer) -> str:
    """The cache's name for how responses are cut (whole responses: one cut)."""
    from ..star.cache import chunk_fingerprint, tokenizer_fingerprint

    if full_response_only:
        return chunk_fingerprint("full", 0)
    tok_fp = tokenizer_fingerprint(tokenizer) if chunk.unit == "tokens" else None
    return chunk_fingerprint(chunk.unit, chunk.size, tok_fp)


def open_pool(job: JobConfig):
    """The guardrail pool of a job; in scoring.mode=cache one actor, only to fingerprint the
    guardrails (every score must come from the cache)."""
    from ..guard.pool import GuardPool
    from ..star.transform import guard_transform

    scoring = job.scoring
    if scoring.mode == "cache":
        scoring = replace(scoring, actors=replace(scoring.actors, min=1, max=1))
    return GuardPool(job.guardrails, scoring,
                     autoscaler=on_cluster(job.ray) and scoring.request_resources,
                     transform=guard_transform(job.star))


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


def scorer_for(job: JobConfig, full_response_only: bool, tokenizer) -> Scorer:
    return Scorer(job.star, chunk_fingerprint_for(job.star.chunk, full_response_only, tokenizer),
                  open_cache(job), cached_only=job.scoring.mode == "cache")


def needs_guardrails(job: JobConfig) -> None:
    if not job.guardrails:
        raise ValueError(f"loss.kind={job.loss.kind} needs at least one entry in guardrails")


def score_rows(job: JobConfig, data: TrainingData, full_response_only: bool, plan_order: bool,
               out_dir: Path, tokenizer, tracker=None) -> tuple[list[StarRecord], dict]:
    """Every row's STAR record, in data order (a repeated row's repeats), scored all at once
    (precompute, or every score from the cache), and <out_dir>/star.jsonl. `plan_order`: the
    pool sees rows in the order stream mode scores them (the same batches, so the same float
    rounding in a model guardrail, whatever the mode); else in data order."""
    needs_guardrails(job)
    started = time.perf_counter()
    scorer = scorer_for(job, full_response_only, tokenizer)
    requests = score_requests(data.rows, data.encoded, job.star.chunk, full_response_only)
    keys = [e.id for e in data.encoded]
    order = ([keys[i] for i in stream_order(plan_for(job.train, job.seed, len(keys)))]
             if plan_order else [])
    sent = [requests[k] for k in dict.fromkeys(order + keys)]
    with open_pool(job) as pool:
        progress = Progress(f"guardrail pool ({pool.size} actors)", "response")
        by_id = {r.id: r for r in scorer.records(pool, sent, progress)}
        PoolMetrics(out_dir / "pool_metrics.jsonl", tracker)(pool.metrics)
    records = [by_id[k] for k in keys]
    summary = {"mode": "cache" if job.scoring.mode == "cache" else "precompute",
               "scored": len(by_id), "prefixes": sum(len(r.cuts) for r in by_id.values()),
               "score_seconds": time.perf_counter() - started, "guard_nodes": pool.node_ids}
    _cache_summary(scorer, summary)
    write_star(records, str(out_dir / "star.jsonl"))
    return records, summary


def training_rows(job: JobConfig, kind: LossKind, data: TrainingData, out_dir: Path, tokenizer,
                  tracker=None) -> tuple[list[TrainRow], dict]:
    """The rows a loss kind trains on, scored as it needs (all at once: not stream mode)."""
    if not kind.uses_guardrails:
        return [train_row(e) for e in data.encoded], {"scored": 0}
    full = kind.scoring == "full_response"
    records, summary = score_rows(job, data, full, kind.streams, out_dir, tokenizer, tracker)
    if kind.drops_unsafe:
        return _rs_rows(job.loss, data, records, out_dir, summary), summary
    return [train_row(e, record_weights(r, e, job.star.threshold))
            for e, r in zip(data.encoded, records)], summary


def _rs_rows(loss: LossConfig, data: TrainingData, records: list[StarRecord], out_dir: Path,
             summary: dict) -> list[TrainRow]:
    """rs: the rows judged safe as whole responses at full weight; the others left out
    (loss.rs_mode=drop) or kept at weight 0 (zero_weight); their ids in
    <out_dir>/rs_<mode>.json and their count in the summary."""
    keep = [r.full_response_safe >= loss.rs_threshold for r in records]
    unsafe = [r.id for r, k in zip(records, keep) if not k]
    name = "rs_dropped" if loss.rs_mode == "drop" else "rs_zero_weighted"
    summary[name] = len(unsafe)
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump(unsafe, f, indent=1)
    if loss.rs_mode == "drop":
        return [train_row(e) for e, k in zip(data.encoded, keep) if k]
    return [train_row(e) if k else
            train_row(e, [0.0] * (len(e.input_ids) - e.response_start))
            for e, k in zip(data.encoded, keep)]


def stream_train(job: JobConfig, kind: LossKind, data: TrainingData, out: Path, tokenizer,
                 spec: TrainingSpec, tracker):
    """scoring.mode=stream: the guardrail pool scores (in a driver thread) while Ray Train
    trains; returns the training result, the rows trained and the STAR summary."""
    import ray

    from ..train.feed import FeedSteps, StepFeed
    from ..train.resume import rows_digest, run_digest
    from ..train.stream import StepProducer
    from ..train.trainer import run_training, uses_reference_actors

    needs_guardrails(job)
    t, sc = job.train, job.scoring
    if not on_cluster(job.ray):
        check_stream_fit(t, job.reference if uses_reference_actors(spec) else None, sc.actors)
    plan = plan_for(t, job.seed, len(data.encoded))
    # A run that may restart from a checkpoint takes its steps again: the feed keeps them.
    # On the driver's node: a feed on a node that is lost would take the run with it.
    feed = StepFeed.options(**on_this_node()).remote(
        t.workers, sc.prefetch_steps, t.micro_batch_size, t.grad_accum,
        retain=t.max_failures != 0)
    full = kind.scoring == "full_response"
    started = time.perf_counter()
    producer = StepProducer(
        data.encoded, score_requests(data.rows, data.encoded, job.star.chunk, full), plan,
        lambda: open_pool(job), scorer_for(job, full, tokenizer), job.star.threshold, feed,
        put_timeout_s=t.timeout_s, progress=Progress("guardrail pool (streaming)", "response"),
        on_metrics=PoolMetrics(out / "pool_metrics.jsonl", tracker))
    # The pool starts in the producer's thread: guard actors load while Ray Train starts.
    thread = threading.Thread(target=producer.run, name="stardss-star-producer", daemon=True)
    try:
        thread.start()
        # A worker never waits longer for a step than the pool may take to fail loudly.
        wait_s = sc.start_timeout_s + sc.progress_timeout_s + sc.timeout_s
        try:
            digest = run_digest(t, spec.job_record, plan, rows_digest(data.encoded))
            result = run_training(spec, FeedSteps(feed, len(plan), wait_s, digest),
                                  on_cluster(job.ray))
        except BaseException as err:
            producer.stop()
            thread.join(timeout=60)
            if producer.error is not None:  # the root cause; the trainer only saw its echo
                raise producer.error from err
            raise
        thread.join(timeout=60)
        if thread.is_alive() or producer.error is not None:
            raise RuntimeError(f"STAR producer did not finish cleanly: {producer.error}")
        feed_stats = get(feed.stats.remote(), timeout_s=30, what="step feed stats")
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
    _cache_summary(producer.scorer, summary)
    return result, len(producer.train_rows), summary


def _cache_summary(scorer: Scorer, summary: dict) -> None:
    cache = scorer.cache
    if cache is not None:
        hits = cache.stats.as_dict()
        summary["cache"] = {"dir": str(cache.root), **hits}
        log(f"STAR cache {cache.root}: {hits['hits']} guardrail-row hits, "
            f"{hits['misses']} misses")
