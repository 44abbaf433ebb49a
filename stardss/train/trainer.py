"""Driver side of training: a Ray Train TorchTrainer whose workers run DeepSpeed."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from omegaconf import OmegaConf

from .batches import TrainRow, plan_steps
from .checkpoint import LOG_FILE, copy_final
from .ds_config import user_deepspeed
from .loss import NEEDS_REFERENCE
from .worker import train_loop_per_worker


@dataclass
class Streamed:
    """Training rows that arrive while training runs (scoring.mode=stream)."""

    feed: Any
    """The StepFeed actor the STAR producer fills."""
    n_steps: int
    """Optimizer steps of the plan the producer follows (`plan_for`)."""
    wait_s: float
    """Longest a worker waits for one step before failing."""


def plan_for(job, n_rows: int) -> list:
    """The seeded global-batch plan of a job: row index per slot per optimizer step."""
    t = job.train
    return plan_steps(n_rows, int(t.micro_batch_size) * int(t.grad_accum) * int(t.workers),
                      int(t.epochs), int(job.seed), t.max_steps)


@dataclass
class TrainResult:
    model_dir: str
    """Hugging Face folder (safetensors + tokenizer + stardss_train_log.json)."""
    log: list
    """Per-step metrics from rank 0."""
    train_seconds: float
    """Time inside the workers' step loop."""
    wall_seconds: float
    """Time of the whole fit, Ray Train start-up included."""
    wait_seconds: float = 0.0
    """Time rank 0 spent inside the step loop waiting for streamed rows."""
    resumed_from: list = field(default_factory=list)
    """Steps the run resumed at after worker failures (empty: it never failed)."""
    reference_digests: list = field(default_factory=list)
    """Per rank: hash of the reference weights before and after training (None: no
    reference)."""
    worker_nodes: list = field(default_factory=list)
    """Per rank: the Ray node id the worker ran on (at the end of the run)."""


def worker_config(job, model_path: str, tokenizer_path: str, pad_id: int) -> dict:
    """What every Ray Train worker gets of the job (plain data; run_training adds the steps)."""
    job_dict = OmegaConf.to_container(job, resolve=True)
    return {
        "train": job_dict["train"],
        "loss": job_dict["loss"],
        "lora": job_dict["model"]["lora"],
        "reference": job_dict["reference"],
        "deepspeed_user": user_deepspeed(job_dict["train"]),
        "seed": int(job.seed),
        "model_path": _local(model_path),
        "tokenizer_path": _local(tokenizer_path),
        "pad_id": int(pad_id),
        "job": job_dict,
        "reference_actors": None,
    }


def _local(path: str) -> str:
    """Workers may start elsewhere: a local folder goes as an absolute path, a Hub id as is."""
    return str(Path(path).resolve()) if os.path.exists(path) else path


def run_training(job, rows: Union[Sequence[TrainRow], Streamed], model_path: str,
                 tokenizer_path: str, pad_id: int, out_dir: str, run_name: str) -> TrainResult:
    """Train `rows` (a table, or streamed) from `model_path` with job.loss / job.train; returns
    the HF folder."""
    import ray

    if isinstance(rows, Streamed):
        steps, n_steps = {"kind": "feed", "feed": rows.feed, "wait_s": rows.wait_s}, rows.n_steps
    elif not rows:
        raise ValueError(f"{run_name}: no rows to train on")
    else:
        plan = plan_for(job, len(rows))
        steps, n_steps = {"kind": "table", "rows": ray.put(list(rows)), "plan": plan}, len(plan)
    check_local_fit(job)
    out = Path(out_dir).resolve()
    config = worker_config(job, model_path, tokenizer_path, pad_id)
    config.update(steps=steps, n_steps=n_steps, run_name=run_name,
                  tracker_group=f"{job.name}-{run_name}", out_dir=str(out))
    started = time.perf_counter()
    with _reference_group(job, config["model_path"]) as group:
        config["reference_actors"] = group.actors if group is not None else None
        result = _trainer(job, config, run_name, out).fit()
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"{run_name}: training finished without a checkpoint ({result.error})")
    model_dir = out / "model"
    copy_final(result.checkpoint, str(model_dir))
    with open(model_dir / LOG_FILE) as f:
        saved = json.load(f)
    return TrainResult(str(model_dir), saved["steps"], saved["metrics"]["train_seconds"], wall,
                       saved["metrics"]["wait_seconds"], saved["metrics"]["resumed_from"],
                       saved["metrics"]["reference_digests"], saved["metrics"]["nodes"])


def _trainer(job, config: dict, run_name: str, out: Path):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    class RowsTrainer(TorchTrainer):
        """A TorchTrainer fed by stardss (a table or the step feed), never by Ray Data: Ray
        2.60 starts a DatasetManager actor (a process, ~4 s of CPU) at every fit even with no
        datasets, so its callback is left out. (Ray's private API: a Ray without it keeps
        its callbacks.)"""

        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            try:
                from ray.train.v2._internal.callbacks import DatasetsCallback
            except ImportError:
                return callbacks
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    train = job.train
    return RowsTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=int(train.workers), use_gpu=bool(train.use_gpu),
                                     resources_per_worker=worker_resources(job),
                                     placement_strategy=str(train.placement_strategy)),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo",
                                 timeout_s=int(train.timeout_s)),
        run_config=RunConfig(name=f"{run_name}-{int(time.time())}",
                             storage_path=str(out / "ray_train"),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=int(train.keep_checkpoints)),
                             failure_config=FailureConfig(max_failures=int(train.max_failures))),
    )


def uses_reference_actors(job) -> bool:
    return (job.loss.kind in NEEDS_REFERENCE and job.reference.placement == "actor_group"
            and not job.model.lora.r)


@contextmanager
def _reference_group(job, model_path: str):
    """reference.placement=actor_group: the actors live for the whole fit (restarts too)."""
    if not uses_reference_actors(job):
        yield None
        return
    from .reference import ReferenceGroup

    with ReferenceGroup(model_path, job.reference, bool(job.train.bf16)) as group:
        yield group


def worker_resources(job) -> dict:
    resources = {"CPU": float(job.train.cpus_per_worker)}
    if job.train.use_gpu:
        resources["GPU"] = 1.0
    resources.update({k: float(v) for k, v in job.train.resources_per_worker.items()})
    return resources


def check_local_fit(job, also: Sequence[tuple[str, int, dict]] = (), hint: str = "") -> None:
    """On a fixed local Ray, stages that must run at once but do not fit side by side would
    wait for each other's resources forever (Ray gives no stage leftovers): fail now, naming
    the keys. `also`: more stages as (what, count, resources each); `hint`: another way out."""
    import ray

    from ..cluster.placement import on_cluster

    if on_cluster(job):
        return  # a cluster may autoscale to fit (Ray Train's start timeout bounds the wait)
    t, r, each = job.train, job.reference, worker_resources(job)
    stages = [(f"train.workers={t.workers} x train.cpus_per_worker={t.cpus_per_worker:g}"
               f"{' (+1 GPU each)' if 'GPU' in each else ''}"
               f"{' + train.resources_per_worker' if t.resources_per_worker else ''}",
               int(t.workers), each)]
    if uses_reference_actors(job):
        stages.append((f"reference.actors={r.actors} x reference.num_cpus={r.num_cpus:g} / "
                       f"num_gpus={r.num_gpus:g}", int(r.actors),
                       {"CPU": float(r.num_cpus), "GPU": float(r.num_gpus)}))
    stages += list(also)
    have = ray.cluster_resources()
    for name in dict.fromkeys(k for s in stages for k in s[2]):
        need = sum(count * res.get(name, 0.0) for _, count, res in stages)
        if need > have.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"{' plus '.join(s[0] for s in stages)} need {need:g} {name}, the local Ray "
                f"has {have.get(name, 0.0):g}: lower them, {hint}or set ray.address to a "
                f"cluster")
