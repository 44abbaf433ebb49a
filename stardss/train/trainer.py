"""Driver side of training: a Ray Train TorchTrainer whose workers run DeepSpeed."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from .batches import TrainRow
from .worker import train_loop_per_worker


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


def run_training(job, rows: Sequence[TrainRow], model_path: str, tokenizer_path: str,
                 pad_id: int, out_dir: str, run_name: str) -> TrainResult:
    """Train `rows` starting from `model_path` with job.loss / job.train; returns the HF folder."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train = job.train
    if not rows:
        raise ValueError(f"{run_name}: no rows to train on")
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
        "rows": ray.put(list(rows)),
        "run_name": run_name,
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
    return TrainResult(str(model_dir), saved["steps"], saved["metrics"]["train_seconds"], wall)


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

