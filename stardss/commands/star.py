"""The STAR stage as `train` and `score` run it: the guardrail pool, the STAR cache and the
three scoring modes (precompute, cache, and stream, where the pool scores beside Ray Train).

All three go through one `star.score.Scorer`, which asks the pool in the same order (the
plan's order of first use), so they give the same weights bit for bit.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..cluster.resources import check_stream_fit, on_cluster
from ..config.schema import ChunkConfig, JobConfig, LossConfig
from ..console import Progress, log
from ..data.shards import row_ids
from ..raytools import get, on_this_node
from ..star.score import Scorer, ScoreRequests, StarRecord, StarWriter, record_weights
from ..train.batches import TrainRow, plan_for, stream_order, train_row
from ..train.kinds import LossKind
from ..train.spec import TrainingSpec
from ..train.weights import TokenWeights, WeightsWriter, first_copies


def open_cache(job: JobConfig):
    from ..star.cache import StarCache

    if not job.star.cache:
        return None
    return StarCache(job.star.cache_dir or str(Path(job.out_dir) / "star_cache"))


def chunk_fingerprint_for(chunk: ChunkConfig, full_response_only: bool, tokenizer) -> str:
    """The cache's name for how responses are cut (whole responses: one cut)."""
    from ..data.tokenizer import tokenizer_fingerprint
    from ..star.cache import chunk_fingerprint

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
                  open_cache(job), cached_only=job.scoring.mode == "cache",
                  guards=[(guard_label(i, g), g.weight) for i, g in enumerate(job.guardrails)])


def guard_label(i: int, g) -> str:
    """How summaries name guardrails[i]: its index, kind and model."""
    return f"{i}:{g.kind}" + (f":{g.name_or_path}" if g.name_or_path else "")


def needs_guardrails(job: JobConfig) -> None:
    if not job.guardrails:
        raise ValueError(f"loss.kind={job.loss.kind} needs at least one entry in guardrails")


def score_each(job: JobConfig, data, full_response_only: bool, plan_order: bool,
               out_dir: Path, tokenizer, on_record: Callable[[StarRecord], None],
               tracker=None) -> dict:
    """Every distinct row scored all at once (precompute, or every score from the cache):
    `on_record` gets each record as it arrives (any order) and <out_dir>/star.jsonl gets it
    in data order (star.score.StarWriter: no record is held). `data`: TrainingData or
    ShardedData. `plan_order`: the pool sees rows in the order stream mode scores them (the
    same batches, so the same float rounding in a model guardrail, whatever the mode); else
    in data order. Returns the STAR summary."""
    needs_guardrails(job)
    started = time.perf_counter()
    scorer = scorer_for(job, full_response_only, tokenizer)
    keys = row_ids(data.encoded)
    order = stream_order(plan_for(job.train, job.seed, len(keys))) if plan_order else []
    # built one at a time as the cache split and the pool read them
    # (data.train_turns=all: a request per assistant turn, a record per row)
    sent = ScoreRequests.first_use(data.rows, data.encoded, job.star.chunk,
                                   full_response_only, keys, chain(order, range(len(keys))),
                                   turns=data.turn_counts())
    prefixes = 0
    with open_pool(job) as pool, StarWriter(out_dir / "star.jsonl", keys) as writer:
        progress = Progress(f"guardrail pool ({pool.size} actors)", "response")
        for record in scorer.row_records(pool, sent, progress):
            writer.add(record)
            prefixes += record.n_prefixes
            on_record(record)
        PoolMetrics(out_dir / "pool_metrics.jsonl", tracker)(pool.metrics)
    summary = {"mode": "cache" if job.scoring.mode == "cache" else "precompute",
               "scored": writer.written, "prefixes": prefixes,
               "score_seconds": time.perf_counter() - started, "guard_nodes": pool.node_ids}
    _scorer_summary(scorer, summary)
    return summary


def score_rows(job: JobConfig, data, full_response_only: bool, plan_order: bool,
               out_dir: Path, tokenizer, tracker=None) -> tuple[list[StarRecord], dict]:
    """score_each with every row's record returned, in data order (a repeated row's
    repeats): for small data (tests, the heatmap); training keeps none (star_rows)."""
    by_id: dict[str, StarRecord] = {}
    summary = score_each(job, data, full_response_only, plan_order, out_dir, tokenizer,
                         lambda r: by_id.setdefault(r.id, r), tracker)
    return [by_id[k] for k in row_ids(data.encoded)], summary


@dataclass
class StarRows:
    """What a STAR-weighted table-mode run trains, without a row table: rows `keep` of the
    data (int64 indices into its rows, in data order; None = every row) and their weights
    (train.weights.TokenWeights, one entry per kept row; None = every kept row unweighted)."""

    keep: Optional[np.ndarray]
    weights: Optional[TokenWeights]
    n_rows: int
    """Rows trained (len(keep), or every row)."""

    def positions(self, data) -> np.ndarray:
        """The kept rows' global shard rows (data: ShardedData)."""
        return data.positions if self.keep is None else data.positions[self.keep]

    def trains_anything(self) -> bool:
        """Some trained token has a weight above 0 (rs on data judged all unsafe: none)."""
        if self.weights is None:
            return self.n_rows > 0
        return self.weights.trains_anything()

    def train_rows(self, encoded: Sequence) -> list[TrainRow]:
        """The kept rows as TrainRows (what a ShardSteps gives the workers, all at once)."""
        keep = range(len(encoded)) if self.keep is None else self.keep.tolist()
        out = []
        for j, i in enumerate(keep):
            w = self.weights.row(j) if self.weights is not None else None
            out.append(train_row(encoded[i], None if w is None else w.tolist()))
        return out


def star_rows(job: JobConfig, kind: LossKind, data, out_dir: Path, tokenizer,
              tracker=None) -> tuple[StarRows, dict]:
    """The rows a guardrail loss kind trains on, scored all at once (not stream mode), their
    weights written to <out_dir>/weights.f32 (train/weights.py) as the records arrive: the
    driver keeps numpy arrays, never a row or a record."""
    full = kind.scoring == "full_response"
    first, copies_of = first_copies(row_ids(data.encoded))
    if kind.drops_unsafe:
        safe = np.full(len(copies_of), np.nan)  # full-response P(safe), by each id's first row

        def judge(record: StarRecord) -> None:
            safe[first[record.id]] = record.full_response_safe

        summary = score_each(job, data, full, kind.streams, out_dir, tokenizer, judge, tracker)
        return _rs_rows(job.loss, data, safe[copies_of], out_dir, summary), summary
    writer = WeightsWriter(out_dir, len(copies_of))
    threshold = job.star.threshold

    def weigh(record: StarRecord) -> None:
        i = first[record.id]
        writer.put(i, record_weights(record, data.encoded[i], threshold))

    try:
        summary = score_each(job, data, full, kind.streams, out_dir, tokenizer, weigh, tracker)
    except BaseException:
        writer.abort()
        raise
    return StarRows(None, writer.close(copies_of), len(copies_of)), summary


def training_rows(job: JobConfig, kind: LossKind, data, out_dir: Path, tokenizer,
                  tracker=None) -> tuple[list[TrainRow], dict]:
    """The rows a loss kind trains on as TrainRows (star_rows, materialised: small data)."""
    if not kind.uses_guardrails:
        return [train_row(e) for e in data.encoded], {"scored": 0}
    rows, summary = star_rows(job, kind, data, out_dir, tokenizer, tracker)
    return rows.train_rows(data.encoded), summary


def _rs_rows(loss: LossConfig, data, safe: np.ndarray, out_dir: Path,
             summary: dict) -> StarRows:
    """rs: the rows judged safe as whole responses (`safe`: each row's full-response P(safe))
    at full weight; the others left out (loss.rs_mode=drop) or kept at weight 0
    (zero_weight); their ids in <out_dir>/rs_<mode>.json and their count in the summary."""
    keep = safe >= loss.rs_threshold
    unsafe_at = np.flatnonzero(~keep)
    unsafe = [data.encoded[int(i)].id for i in unsafe_at]
    name = "rs_dropped" if loss.rs_mode == "drop" else "rs_zero_weighted"
    summary[name] = len(unsafe)
    with open(out_dir / f"{name}.json", "w") as f:
        json.dump(unsafe, f, indent=1)
    if loss.rs_mode == "drop":
        kept = np.flatnonzero(keep)
        return StarRows(kept, None, len(kept))
    lengths = response_lengths(data)
    writer = WeightsWriter(out_dir, len(keep))
    for i in unsafe_at:
        writer.put(int(i), np.zeros(int(lengths[i]), np.float32))
    return StarRows(None, writer.close(), len(keep))


def response_lengths(data) -> np.ndarray:
    """Response tokens of each row of the data (int64): from the shard set's per-row maps, or
    from the rows of in-memory data."""
    if hasattr(data, "shards"):
        g = data.positions
        return (data.shards.lengths[g].astype(np.int64)
                - data.shards.response_start[g].astype(np.int64))
    return np.asarray([len(e.input_ids) - e.response_start for e in data.encoded], np.int64)


def stream_train(job: JobConfig, kind: LossKind, data, out: Path, tokenizer,
                 spec: TrainingSpec, tracker):
    """scoring.mode=stream: the guardrail pool scores (in a driver thread) while Ray Train
    trains; returns the training result, the rows trained and the STAR summary. The weights
    of the rows scored go to <out>/weights.f32 as they come (train/weights.py)."""
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
        data.encoded, partial(ScoreRequests.first_use, data.rows, data.encoded, job.star.chunk,
                              full, turns=data.turn_counts()), plan,
        lambda: open_pool(job), scorer_for(job, full, tokenizer), job.star.threshold, feed,
        weights_dir=out, put_timeout_s=t.timeout_s,
        progress=Progress("guardrail pool (streaming)", "response"),
        on_metrics=PoolMetrics(out / "pool_metrics.jsonl", tracker))
    # The pool starts in the producer's thread: guard actors load while Ray Train starts.
    thread = threading.Thread(target=producer.run, name="stardss-star-producer", daemon=True)
    finished = False
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
        producer.finish()  # star.jsonl and weights.f32 in place
        finished = True
    finally:
        producer.stop()
        ray.kill(feed, no_restart=True)
        if not finished:
            producer.abort()
    summary = {"mode": "stream", "scored": producer.scored - producer.cache_hits,
               "prefixes": producer.prefixes,
               "score_seconds": time.perf_counter() - started, "steps": len(plan),
               "feed": feed_stats, "trainer_wait_seconds": result.wait_seconds,
               "guard_nodes": producer.pool.node_ids if producer.pool else []}
    _scorer_summary(producer.scorer, summary)
    return result, producer.rows_weighted, summary


def _scorer_summary(scorer: Scorer, summary: dict) -> None:
    if scorer.agreement is not None:
        summary["agreement"] = agreed = scorer.agreement.summary()
        for pair in agreed["pairs"] if agreed["chunks"] else ():
            log(f"guardrails {' vs '.join(pair['guards'])}: verdicts differ on "
                f"{100 * pair['disagree']:.1f} % of {agreed['chunks']} chunks (mean |P(safe) "
                f"gap| {pair['mean_abs_gap']:.3f})")
    cache = scorer.cache
    if cache is not None:
        hits = cache.stats.as_dict()
        summary["cache"] = {"dir": str(cache.root), **hits}
        log(f"STAR cache {cache.root}: {hits['hits']} guardrail-row hits, "
            f"{hits['misses']} misses")
