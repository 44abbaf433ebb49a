"""Driver side of training: a Ray Train TorchTrainer whose workers run DeepSpeed."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from ..cluster.resources import check_local_fit, training_reservations, worker_resources
from ..console import log
from ..raytools import alive_nodes, node_label, nodes_lost_since, room_for
from .batches import TrainRow, plan_for
from .checkpoint import LOG_FILE, copy_final, save_initial
from .feed import FeedError, StepSource, TableSteps
from .kinds import loss_kind
from .resume import choose_attempt, mark_finished, rows_digest, run_digest
from .spec import TrainingSpec
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
    wait_seconds: float = 0.0
    """Time rank 0 spent inside the step loop waiting for streamed rows."""
    resumed_from: list = field(default_factory=list)
    """Steps the run resumed at after worker failures (empty: it never failed)."""
    reference_digests: list = field(default_factory=list)
    """Per rank: hash of the reference weights before and after training (None: no
    reference)."""
    worker_nodes: list = field(default_factory=list)
    """Per rank: the Ray node id the worker ran on (at the end of the run)."""


def untrained(spec: TrainingSpec, reason: str) -> TrainResult:
    """The initial model as the run's result, with `reason` in its log (no Ray Train fit)."""
    model_dir = Path(spec.out_dir).resolve() / "model"
    save_initial(spec, str(model_dir), reason)
    return TrainResult(str(model_dir), [], 0.0, 0.0)


def table_steps(rows: Sequence[TrainRow], spec: TrainingSpec) -> TableSteps:
    """Every row weighted already: the table goes to the object store once, with the plan."""
    import ray

    if not rows:
        raise ValueError(f"{spec.run_name}: no rows to train on")
    t = spec.train
    plan = plan_for(t, spec.seed, len(rows))
    return TableSteps(ray.put(list(rows)), plan, t.micro_batch_size, t.grad_accum, t.timeout_s,
                      digest=run_digest(t, spec.job_record, plan, rows_digest(rows)))


def uses_reference_actors(spec: TrainingSpec) -> bool:
    return (loss_kind(spec.loss.kind).reference and spec.reference.placement == "actor_group"
            and not spec.model.lora.r)


def run_training(spec: TrainingSpec, steps: StepSource, on_cluster: bool) -> TrainResult:
    """Train from `spec.model` on `steps` (a table, or streamed) with the spec's loss and train
    sections; returns the Hugging Face folder and the run's metrics."""
    if not on_cluster:  # a cluster may autoscale to fit (Ray Train's start timeout bounds it)
        check_local_fit(training_reservations(
            spec.train, spec.reference if uses_reference_actors(spec) else None))
    out = Path(spec.out_dir).resolve()
    spec = replace(spec, out_dir=str(out), steps=steps,
                   model=replace(spec.model, name_or_path=_local(spec.model.name_or_path),
                                 tokenizer=_local(spec.tokenizer_path)))
    storage = out / "ray_train"
    attempt, why = choose_attempt(storage, spec.train.resume, spec.run_name, steps.digest)
    if why:
        log(why)
    started = time.perf_counter()
    nodes = alive_nodes()  # to name the nodes lost if Ray Train gives up
    with _reference_group(spec) as actors, _start_timeout(spec.train.start_timeout_s):
        try:
            result = _trainer(replace(spec, reference_actors=actors), attempt.name,
                              storage).fit()
        except Exception as err:
            failure = _failure_line(spec, err, nodes)
            if failure is None:
                raise
            raise failure from err
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"{spec.run_name}: training finished without a checkpoint "
                           f"({result.error})")
    model_dir = out / "model"
    copy_final(result.checkpoint, str(model_dir))
    mark_finished(storage, attempt)
    with open(model_dir / LOG_FILE) as f:
        saved = json.load(f)
    m = saved["metrics"]
    return TrainResult(str(model_dir), saved["steps"], m["train_seconds"], wall,
                       m["wait_seconds"], m["resumed_from"], m["reference_digests"], m["nodes"])


# Ray Train's knob for how long a worker group may wait for its placement group; Ray copies
# the driver's value to the Train controller when a fit starts.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@contextmanager
def _start_timeout(seconds: float):
    """train.start_timeout_s as Ray Train's environment variable, for one fit."""
    before = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = f"{seconds:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = before


def _failure_line(spec: TrainingSpec, err: Exception, nodes: dict) -> Optional[RuntimeError]:
    """Ray Train's failure as one line a person reads, or None (raise it as it is).

    The worker group could not (re)start within Ray Train's start timeout (it tries
    train.max_failures + 1 times: see `_trainer`): how many workers, what each needs, the
    nodes that died since the fit began (`nodes`: the live nodes then), and how many workers
    the live nodes hold. A worker lost the step feed: the feed's own line.
    """
    t = spec.train
    cause = getattr(err, "controller_failure", None)  # ray.train.ControllerError
    if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
        lost = nodes_lost_since(nodes)
        bundle = worker_resources(t)
        wanted = ", ".join(f"{k}: {v:g}" for k, v in bundle.items())
        after = f" after {', '.join(node_label(n) for n in lost)} died" if lost else ""
        return RuntimeError(
            f"{spec.run_name}: Ray Train could not {'restart' if lost else 'start'} its "
            f"{t.workers} workers within {t.start_timeout_s:g}s (train.start_timeout_s; tried "
            f"{t.max_failures + 1} times, train.max_failures={t.max_failures}){after}: the "
            f"live nodes hold {room_for(bundle, list(alive_nodes().values()))} of "
            f"{t.workers} x {{{wanted}}} (train.cpus_per_worker, train.resources_per_worker)")
    for failure in (getattr(err, "worker_failures", None) or {}).values():  # WorkerGroupError
        base = getattr(failure, "_base_exc", failure)  # Ray Train's traceback wrapper
        if isinstance(base, FeedError):
            return RuntimeError(f"{spec.run_name}: {base}")
    return None


def _local(path: str) -> str:
    """Workers may start elsewhere: a local folder goes as an absolute path, a Hub id as is."""
    return str(Path(path).resolve()) if os.path.exists(path) else path


def _trainer(spec: TrainingSpec, name: str, storage: Path):
    """`name` and `storage`: Ray Train's run (the same pair continues a run, resume.py)."""
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

    t = spec.train
    return RowsTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker=worker_resources(t),
                                     placement_strategy=t.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo",
                                 timeout_s=int(t.timeout_s)),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             failure_config=FailureConfig(
                                 max_failures=t.max_failures,
                                 # a group that cannot (re)start fails the run after as
                                 # many tries, not never (Ray's default: -1)
                                 controller_failure_limit=t.max_failures)),
    )


@contextmanager
def _reference_group(spec: TrainingSpec):
    """reference.placement=actor_group: the actors live for the whole fit (restarts too);
    yields their handles (None without the group)."""
    if not uses_reference_actors(spec):
        yield None
        return
    from .reference import ReferenceGroup

    with ReferenceGroup(spec.model.name_or_path, spec.reference, spec.train.bf16) as group:
        yield group.actors
