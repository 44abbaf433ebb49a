"""Driver side of training: a Ray Train TorchTrainer whose workers run DeepSpeed."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

from omegaconf import OmegaConf

from .batches import TrainRow, plan_steps
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


def run_training(job, rows: Union[Sequence[TrainRow], Streamed], model_path: str,
                 tokenizer_path: str, pad_id: int, out_dir: str, run_name: str) -> TrainResult:
    """Train `rows` (a table, or streamed) from `model_path` with job.loss / job.train; returns
    the HF folder."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train = job.train
    if isinstance(rows, Streamed):
        steps, n_steps = {"kind": "feed", "feed": rows.feed, "wait_s": rows.wait_s}, rows.n_steps
    elif not rows:
        raise ValueError(f"{run_name}: no rows to train on")
    else:
        plan = plan_for(job, len(rows))
        steps, n_steps = {"kind": "table", "rows": ray.put(list(rows)), "plan": plan}, len(plan)
    resources = {"CPU": float(train.cpus_per_worker)}
    if train.use_gpu:
        resources["GPU"] = 1.0
    _check_resources(job, resources)
    out = Path(out_dir).resolve()
    job_dict = OmegaConf.to_container(job, resolve=True)
    config = {
        "train": job_dict["train"],
        "loss": job_dict["loss"],
        "seed": int(job.seed),
        "model_path": str(Path(model_path).resolve()) if os.path.exists(model_path) else model_path,
        "tokenizer_path": str(Path(tokenizer_path).resolve()) if os.path.exists(tokenizer_path)
        else tokenizer_path,
        "pad_id": int(pad_id),
        "steps": steps,
        "n_steps": n_steps,
        "run_name": run_name,
        "tracker_group": f"{job.name}-{run_name}",
        "out_dir": str(out),
        "job": job_dict,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=int(train.workers), use_gpu=bool(train.use_gpu),
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo",
                                 timeout_s=int(train.timeout_s)),
        run_config=RunConfig(name=f"{run_name}-{int(time.time())}",
                             storage_path=str(out / "ray_train")),
    )
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"{run_name}: training finished without a checkpoint ({result.error})")
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    result.checkpoint.to_directory(str(model_dir))
    with open(model_dir / "stardss_train_log.json") as f:
        saved = json.load(f)
    return TrainResult(str(model_dir), saved["steps"], saved["metrics"]["train_seconds"], wall,
                       saved["metrics"]["wait_seconds"])


def _check_resources(job, per_worker: dict) -> None:
    """On a fixed local Ray, a worker group larger than the machine would wait forever."""
    import ray

    if (job.ray or {}).get("address"):
        return  # a cluster may autoscale to fit; Ray Train's start timeout bounds the wait
    have = ray.cluster_resources()
    for name, amount in per_worker.items():
        need = amount * int(job.train.workers)
        if have.get(name, 0.0) + 1e-9 < need:
            raise ValueError(
                f"train.workers={job.train.workers} x {amount:g} {name} per worker needs {need:g} "
                f"{name}, the local Ray has {have.get(name, 0.0):g}: lower train.workers or "
                f"train.cpus_per_worker, or set ray.address to a cluster")

