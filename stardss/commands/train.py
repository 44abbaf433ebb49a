"""`stardss train`: data -> STAR (the guardrail pool) -> Ray Train + DeepSpeed -> a Hugging
Face folder, and the run's summary.json."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..cluster.placement import check_placement
from ..cluster.resources import init_ray, on_cluster
from ..config.load import to_dict
from ..config.schema import JobConfig
from ..console import log
from ..data.load import prepare_training_data
from ..data.tokenizer import check_model_ref
from ..tracking import open_tracker, redact
from ..train.kinds import loss_kind
from ..train.resume import would_continue
from ..train.spec import TrainingSpec
from .during import safety_monitor, snapshot_dir
from .star import star_rows, stream_train


def training_spec(job: JobConfig, model_path: str, tokenizer_path: str, pad_id: int,
                  out: Path, run_name: str) -> TrainingSpec:
    """What the Ray Train workers get of the job (the steps are added by run_training)."""
    from ..train.ds_config import user_deepspeed

    dt = job.eval.during_training
    return TrainingSpec(
        train=job.train, loss=job.loss, reference=job.reference, seed=job.seed, pad_id=pad_id,
        max_length=job.data.max_length,
        model=replace(job.model, name_or_path=model_path, tokenizer=tokenizer_path),
        tracking=job.tracking.wandb, job_record=redact(to_dict(job)), run_name=run_name,
        tracker_group=tracker_group(job, run_name), out_dir=str(out),
        deepspeed_user=user_deepspeed(job.train),
        snapshot_every=dt.every_steps if dt.enabled else 0,
        snapshot_dir=snapshot_dir(out) if dt.enabled else None)


def shard_root(job: JobConfig) -> Path:
    """Where a job's tokenised shards go: data.shards_dir, default <out_dir>/shards, shared by
    the job's runs (each source's folder is named by its content key, so any run on the same
    data reuses it)."""
    return Path(job.data.shards_dir or Path(job.out_dir) / "shards")


def tracker_group(job: JobConfig, run_name: str) -> str:
    """The W&B group of a run: the driver's and rank 0's runs share it."""
    return f"{job.name}-{run_name}"


def run_train(job: JobConfig, model_path: Optional[str] = None, run_name: Optional[str] = None,
              out_dir: Optional[str] = None) -> dict:
    """The `train` command: data -> STAR -> Ray Train; returns the run summary. `model_path`
    (default model.name_or_path) is where training starts, `out_dir` (default
    <out_dir>/<loss kind>) where the run's files go."""
    from ..train.feed import shard_steps
    from ..train.trainer import run_training, untrained

    kind = loss_kind(job.loss.kind)
    run_name = run_name or kind.name
    model_path = model_path or job.model.name_or_path
    tok_path = job.model.tokenizer or model_path
    out = Path(out_dir or Path(job.out_dir) / kind.name)
    # A typo in the model path fails here, not in the Train workers after data and STAR.
    check_model_ref(model_path, "model.name_or_path", job.model.revision)
    # Ray starts first only when the data is large enough to tokenise in parallel tasks: a
    # small job's bad row is reported in a second, before any Ray start.
    tokenizer, data = prepare_training_data(job.data, job.model, tok_path, out, seed=job.seed,
                                            shard_root=shard_root(job),
                                            start_ray=lambda: init_ray(job.ray, job.train))
    log(f"{kind.name}: {len(data.positions)} rows ready; bad rows: "
        f"{data.summary['bad_rows']['total']}")
    init_ray(job.ray, job.train)
    cluster = on_cluster(job.ray)
    if cluster:
        check_placement(job.train, job.scoring, kind.uses_guardrails)
    spec = training_spec(job, model_path, tok_path, tokenizer.pad_token_id, out, run_name)
    if spec.snapshot_dir and not would_continue(out / "ray_train", job.train.resume):
        # an earlier run's snapshots would be judged as this run's safety over training
        shutil.rmtree(spec.snapshot_dir, ignore_errors=True)
    with open_tracker(job.tracking.wandb, job=spec.job_record, group=spec.tracker_group,
                      role="driver", out_dir=str(out)) as tracker, \
            safety_monitor(job, out, tracker, model_path) as monitor:
        if kind.streams and job.scoring.mode == "stream":
            log(f"{kind.name}: streaming STAR rows into {job.train.workers} Ray Train workers")
            result, n_rows, star_summary = stream_train(job, kind, data, out, tokenizer, spec,
                                                        tracker)
        elif not kind.uses_guardrails:  # every row at weight 1: train from the shards
            n_rows, star_summary = len(data.positions), {"scored": 0}
            log(f"{kind.name}: training on {n_rows} rows with {job.train.workers} Ray Train "
                f"workers (rows read from the shards in {data.summary['shards']['dir']})")
            result = run_training(spec, shard_steps(data, job.train, job.seed,
                                                    spec.job_record), cluster)
        else:
            if kind.drops_unsafe and job.scoring.mode == "stream":
                log(f"{kind.name}: scoring every row before training (it plans batches from "
                    f"the full-response verdicts)")
            star, star_summary = star_rows(job, kind, data, out, tokenizer, tracker)
            n_rows = star.n_rows
            if kind.drops_unsafe and not star.trains_anything():
                warning = (f"{kind.name}: the guardrails judge every one of the "
                           f"{len(data.positions)} rows unsafe (loss.rs_threshold="
                           f"{job.loss.rs_threshold:g}): nothing to train; the model written "
                           f"is the initial one")
                log(f"warning: {warning}")
                star_summary["warning"] = warning
                result, n_rows = untrained(spec, warning), 0
            else:
                log(f"{kind.name}: training on {n_rows} rows with {job.train.workers} Ray "
                    f"Train workers (rows read from the shards, weights from {out})")
                result = run_training(spec, shard_steps(
                    data, job.train, job.seed, spec.job_record, positions=star.positions(data),
                    weights=star.weights), cluster)
        summary = {"loss": kind.name, "model_dir": result.model_dir, "rows_trained": n_rows,
                   "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
                   "final_loss": result.log[-1]["loss"] if result.log else None,
                   "steps": len(result.log), "worker_nodes": result.worker_nodes,
                   "data": data.summary, "star": star_summary}
        if monitor is not None:
            monitor.finish(timeout_s=job.train.timeout_s)
            summary["safety_over_training"] = monitor.done
            summary["safety_over_training_busy_seconds"] = monitor.busy_s
        tracker.summary({k: v for k, v in (("final_loss", summary["final_loss"]),
                                            ("steps", summary["steps"]),
                                            ("rows_trained", n_rows),
                                            ("train_seconds", result.train_seconds))
                         if v is not None})
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary
