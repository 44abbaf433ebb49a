"""The stages wired in data order, as the `score`, `train` and `eval` commands run them.

    data (load, validate, mix, tokenise) -> guard pool (P(safe) per prefix) -> STAR weights
    -> Ray Train + DeepSpeed -> Hugging Face checkpoint -> eval
"""
from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .data.format import EncodedRow, encode_row
from .data.load import load_mixture, load_rows
from .data.quarantine import BadRowSink
from .data.rows import BadRow, ChatRow
from .data.tokenizer import load_tokenizer

# Ray Train polls workers every 2 s by default, which makes every report cost that much.
_RAY_ENV = {"DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def log(msg: str) -> None:
    print(f"[stardss] {msg}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar (stderr) for loops that report (done, total)."""

    def __init__(self, what: str, unit: str = "it"):
        self.what, self.unit, self._bar = what, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"[stardss] {self.what}", unit=self.unit,
                             file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def init_ray(job) -> None:
    import ray

    env = {k: os.environ.get(k, v) for k, v in _RAY_ENV.items()}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(job.train.health_check_interval_s)
    os.environ.update(env)  # the local raylet and the Train controller read these at start
    if ray.is_initialized():
        return
    kwargs = OmegaConf.to_container(job.ray, resolve=True) or {}
    kwargs.setdefault("include_dashboard", False)
    runtime_env = dict(kwargs.pop("runtime_env", {}) or {})
    runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    ray.init(runtime_env=runtime_env, **kwargs)


@dataclass
class TrainingData:
    rows: list[ChatRow]
    encoded: list[EncodedRow]
    summary: dict = field(default_factory=dict)


def load_training_data(job, tokenizer, sink: BadRowSink) -> TrainingData:
    """Mixture rows that parse and fit data.max_length; the rest go to the sink (error or quarantine)."""
    rows, summary = load_mixture(job.data, sink, seed=int(job.seed))
    kept, encoded = [], []
    for row in rows:
        try:
            encoded.append(encode_row(tokenizer, row, int(job.data.max_length)))
            kept.append(row)
        except BadRow as bad:
            sink.handle(bad)
    summary["bad_rows"] = sink.counts
    summary["rows_encoded"] = len(encoded)
    if not encoded:
        raise ValueError("no usable training rows after validation (see data summary / quarantine)")
    return TrainingData(kept, encoded, summary)


def open_cache(job):
    from .star.cache import StarCache

    if not job.star.cache:
        return None
    return StarCache(job.star.cache_dir or str(Path(job.out_dir) / "star_cache"))


def chunk_fp_for(job, kind: str, tokenizer) -> str:
    """The cache's name for how responses are cut (rs: the whole response only)."""
    from .star.cache import chunk_fingerprint, tokenizer_fingerprint

    chunk = job.star.chunk
    if kind == "rs":
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
    on_cluster = bool((job.ray or {}).get("address"))
    return GuardPool(job.guardrails, scoring, autoscaler=on_cluster and scoring.request_resources)


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

    if kind == "sft":
        return [unweighted_row(e) for e in data.encoded], {"scored": 0}, []
    if not job.guardrails:
        raise ValueError(f"loss.kind={kind} needs at least one entry in guardrails")
    started = time.perf_counter()
    cache = open_cache(job)
    if job.scoring.mode == "cache" and cache is None:
        raise ValueError("scoring.mode=cache needs star.cache=true")
    # dss rows go to the pool in the order stream mode scores them: the same batches, so the
    # same float rounding in a model guardrail, whatever the mode.
    order = stream_order(plan_for(job, len(data.encoded))) if kind == "dss" else None
    with open_pool(job) as pool:
        records = score_star(data.rows, data.encoded, pool, job.star,
                             chunk_fp_for(job, kind, tokenizer), cache,
                             full_response_only=(kind == "rs"),
                             progress=Progress(f"guardrail pool ({pool.size} actors)",
                                               "response"),
                             cached_only=job.scoring.mode == "cache", order=order)
        PoolMetrics(out_dir / "pool_metrics.jsonl", tracker)(pool.metrics)
    distinct = {r.id: r for r in records}  # a mixture may repeat rows; each is scored once
    summary = {"mode": "cache" if job.scoring.mode == "cache" else "precompute",
               "scored": len(distinct), "prefixes": sum(len(r.cuts) for r in distinct.values()),
               "score_seconds": time.perf_counter() - started}
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

    if not job.guardrails:
        raise ValueError("loss.kind=dss needs at least one entry in guardrails")
    t = job.train
    plan = plan_for(job, len(data.encoded))
    feed = StepFeed.remote(int(t.workers), int(job.scoring.prefetch_steps),
                           int(t.micro_batch_size), int(t.grad_accum))
    cache = open_cache(job)
    started = time.perf_counter()
    producer = StepProducer(
        data.rows, data.encoded, plan, lambda: open_pool(job), job.star,
        chunk_fp_for(job, "dss", tokenizer), feed, put_timeout_s=float(t.timeout_s), cache=cache,
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
               "feed": feed_stats, "trainer_wait_seconds": result.wait_seconds}
    _cache_summary(cache, summary)
    return result, len(producer.train_rows), summary


def prepare_run(job, out: Path, tokenizer_path: str):
    """The trainee's tokenizer and the validated, tokenised training data of a run in `out`;
    bad rows go to <out>/quarantine.jsonl when data.on_bad_row=quarantine."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_path, job.model.revision, job.model.chat_template)
    (out / "quarantine.jsonl").unlink(missing_ok=True)  # the sink appends; a rerun starts clean
    with BadRowSink(job.data.on_bad_row, out / "quarantine.jsonl") as sink:
        data = load_training_data(job, tokenizer, sink)
    return tokenizer, data


def run_train(job, model_path: Optional[str] = None, run_name: Optional[str] = None,
              out_dir: Optional[str] = None) -> dict:
    """The `train` command: data -> STAR -> Ray Train; returns the run summary."""
    from .tracking import open_tracker
    from .train.trainer import run_training

    kind = job.loss.kind
    run_name = run_name or kind
    model_path = model_path or job.model.name_or_path
    tok_path = job.model.tokenizer or model_path
    out = Path(out_dir or Path(job.out_dir) / kind)
    tokenizer, data = prepare_run(job, out, tok_path)
    log(f"{kind}: {len(data.encoded)} rows ready; bad rows: {data.summary['bad_rows']['total']}")
    init_ray(job)
    job_dict = OmegaConf.to_container(job, resolve=True)
    with open_tracker(job.tracking.wandb, job=job_dict, group=tracker_group(job, run_name),
                      role="driver", out_dir=str(out)) as tracker:
        if kind == "dss" and job.scoring.mode == "stream":
            log(f"{kind}: streaming STAR rows into {job.train.workers} Ray Train workers")
            result, n_rows, star_summary = stream_train(job, data, out, tokenizer, model_path,
                                                        tok_path, run_name, tracker)
        else:
            if kind == "rs" and job.scoring.mode == "stream":
                log("rs: scoring every row before training (it plans batches from the "
                    "full-response verdicts)")
            rows, star_summary, _ = star_train_rows(job, data, kind, out, tokenizer, tracker)
            n_rows = len(rows)
            log(f"{kind}: training on {n_rows} rows with {job.train.workers} Ray Train workers")
            result = run_training(job, rows, model_path, tok_path, tokenizer.pad_token_id,
                                  str(out), run_name)
        summary = {"loss": kind, "model_dir": result.model_dir, "rows_trained": n_rows,
                   "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
                   "final_loss": result.log[-1]["loss"], "steps": len(result.log),
                   "data": data.summary, "star": star_summary}
        tracker.summary({"final_loss": summary["final_loss"], "steps": summary["steps"],
                         "rows_trained": n_rows, "train_seconds": result.train_seconds})
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def tracker_group(job, run_name: str) -> str:
    """The W&B group of a run: the driver's and rank 0's runs share it (train/trainer.py
    names rank 0's the same way)."""
    return f"{job.name}-{run_name}"


def run_score(job, html: Optional[str] = None) -> dict:
    """The `score` command: STAR trajectories of the training data into <out_dir>/score/star.jsonl
    (reusing and filling the STAR cache); with `html`, a heatmap page of them."""
    out = Path(job.out_dir) / "score"
    tokenizer, data = prepare_run(job, out, job.model.tokenizer or job.model.name_or_path)
    init_ray(job)
    _, summary, records = star_train_rows(job, data, "dss", out, tokenizer)
    summary.update(star_file=str(out / "star.jsonl"), data=data.summary)
    if html:
        from .star.heatmap import write_heatmap

        write_heatmap(records, html, title=f"STAR trajectories: {job.name}", worst_first=True)
        summary["html"] = html
    return summary


def load_eval_sets(job) -> tuple[list[ChatRow], list[ChatRow]]:
    """Held-out prompts; malformed eval rows are always an error (an eval must not shrink)."""
    with BadRowSink("error", None) as sink:
        sets = []
        for sources in (job.eval.harmful, job.eval.benign):
            by_source, _ = load_rows(list(sources), sink, seed=int(job.seed),
                                     require_response=False)
            sets.append([r for rows in by_source.values() for r in rows])
    return sets[0], sets[1]


def pool_judge(pool):
    """Judge whole responses with the guardrail actor pool: (n_judges, n) P(safe)."""
    import numpy as np

    from .guard.pool import ScoreRequest

    def judge(prompts: list[str], responses: list[str]) -> np.ndarray:
        requests = [ScoreRequest(str(i), p, r, [len(r)])
                    for i, (p, r) in enumerate(zip(prompts, responses))]
        scored = pool.score(requests)
        return np.stack([scored[q.key][:, 0] for q in requests], axis=1)

    return judge


def run_eval(job, models: dict[str, str]) -> dict:
    """The `eval` command: safety rate and capability of each named model folder; the judges
    run in the guardrail actor pool, like the training guardrails."""
    from .eval.evaluate import evaluate_model
    from .guard.pool import GuardPool

    harmful, benign = load_eval_sets(job)
    judges = list(job.eval.judge or job.guardrails)
    if not judges:
        raise ValueError("eval needs eval.judge or guardrails to judge responses")
    init_ray(job)
    results = {}
    with GuardPool(judges, job.scoring) as pool:
        for name, path in models.items():
            log(f"eval {name}: {len(harmful)} harmful prompts, {len(benign)} tasks")
            results[name] = evaluate_model(path, job.eval, harmful, benign, pool_judge(pool),
                                           job.star.combine, int(job.seed))
            log(f"eval {name}: safety {results[name]['safety_rate']:.3f} "
                f"capability {results[name]['capability']:.3f}")
    return results
