"""What each stage reserves on Ray, whether the stages of a run fit side by side on a local
Ray, and starting Ray for a run (the environment its driver and workers get).

A Ray stage that waits for resources no one will free waits forever (Ray gives no stage
leftovers), so on a fixed local Ray the stages that must run at once are checked here before
anything starts; on a cluster (`ray.address` set) the autoscaler may add nodes instead.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional, Sequence

from ..config.schema import ActorsConfig, ReferenceConfig, TrainConfig
from ..errors import UserError

# Ray Train polls workers every 2 s by default, which makes every report cost that much.
DRIVER_ENV = {"DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
"""The variables the driver sets for itself and every Ray process of a run."""
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
PROBE_TIMEOUT_S = 10.0
"""Longest a TCP connect to ray.address's port may take before the run gives up on it: ray.init
itself retries an address where nothing answers for minutes."""


class RayAddressError(UserError, ConnectionError):
    """ray.address names no Ray cluster that answers (exit 2: the address is the user's)."""

    error_kind = "ray"


def on_cluster(ray_kwargs: dict) -> bool:
    """The job's `ray` section names a cluster to join (ray.address)."""
    return bool((ray_kwargs or {}).get("address"))


def init_ray(ray_kwargs: dict, train: TrainConfig) -> None:
    """Start (or join, with ray.address) the Ray of a run; a no-op when Ray is up already."""
    import ray

    env = {k: os.environ.get(k, v) for k, v in DRIVER_ENV.items()}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(train.health_check_interval_s)
    if train.use_gpu and "DS_ACCELERATOR" not in os.environ:
        del env["DS_ACCELERATOR"]  # DeepSpeed detects CUDA on GPU workers by itself
    if not on_cluster(ray_kwargs):
        # No spot node can be preempted on a local Ray; the watcher is one more actor process
        # (~4 s of CPU) at the start of every fit.
        env[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
    os.environ.update(env)  # the local raylet and the Train controller read these at start
    if ray.is_initialized():
        return
    kwargs = dict(ray_kwargs or {})
    if on_cluster(kwargs):
        probe_address(str(kwargs["address"]), temp_dir=kwargs.get("_temp_dir"))
    kwargs.setdefault("include_dashboard", False)
    runtime_env = dict(kwargs.pop("runtime_env", {}) or {})
    runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    ray.init(runtime_env=runtime_env, **kwargs)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S,
                  temp_dir: Optional[str] = None) -> None:
    """Raise RayAddressError within `timeout_s` unless something accepts a TCP connection at
    the address ray.init would join: HOST:PORT, ray://HOST:PORT (Ray Client), or auto (the
    cluster Ray finds from RAY_ADDRESS or the last head started with `temp_dir`, as ray.init
    looks it up; none: Ray's own quick ConnectionError)."""
    from ray._private.services import canonicalize_bootstrap_address, parse_address

    target = address
    if address.startswith("ray://"):
        target = address[len("ray://"):].rstrip("/")
    elif address == "auto":
        target = canonicalize_bootstrap_address("auto", temp_dir)  # none: ConnectionError
        if target is None:
            return
    parsed = parse_address(target)
    if parsed is None:
        raise RayAddressError(f"ray.address={address}: not of the form HOST:PORT, "
                              f"ray://HOST:PORT or auto")
    host, port = parsed
    shown = address if address == target else f"{address} ({target})"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as err:
        why = "timed out" if isinstance(err, socket.timeout) else (
            err.strerror or type(err).__name__).lower()
        raise RayAddressError(f"ray.address={shown}: no Ray cluster answered within "
                              f"{timeout_s:g} s ({why}): is the head up, at that port (the one "
                              f"`ray start --head` prints)?") from None


@dataclass(frozen=True)
class Reservation:
    """`count` Ray processes of one stage, each reserving `each`; `what` names the keys."""

    what: str
    count: int
    each: dict


def worker_resources(train: TrainConfig) -> dict:
    """What one Ray Train worker reserves (the ScalingConfig's resources_per_worker)."""
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1.0
    resources.update(train.resources_per_worker)
    return resources


def actor_resources(actors: ActorsConfig) -> dict:
    """What one guardrail actor reserves (scoring.actors): CPU, GPU and custom resources."""
    return {"CPU": actors.num_cpus, "GPU": actors.num_gpus, **actors.resources}


def train_workers(train: TrainConfig) -> Reservation:
    each = worker_resources(train)
    return Reservation(f"train.workers={train.workers} x train.cpus_per_worker="
                       f"{train.cpus_per_worker:g}{' (+1 GPU each)' if 'GPU' in each else ''}"
                       f"{' + train.resources_per_worker' if train.resources_per_worker else ''}",
                       train.workers, each)


def reference_actors(reference: ReferenceConfig) -> Reservation:
    return Reservation(f"reference.actors={reference.actors} x reference.num_cpus="
                       f"{reference.num_cpus:g} / num_gpus={reference.num_gpus:g}",
                       reference.actors, {"CPU": reference.num_cpus, "GPU": reference.num_gpus})


def guard_actors(actors: ActorsConfig) -> Reservation:
    """The guardrail pool at its smallest (it only grows into room that is free)."""
    return Reservation(f"scoring.actors.min={actors.min} x scoring.actors.num_cpus="
                       f"{actors.num_cpus:g} / num_gpus={actors.num_gpus:g}"
                       f"{' + scoring.actors.resources' if actors.resources else ''}",
                       actors.min, actor_resources(actors))


def training_reservations(train: TrainConfig,
                          reference: Optional[ReferenceConfig] = None) -> list[Reservation]:
    """What a fit reserves at once: its workers, and the reference actor group when it uses
    one (pass `reference` only then)."""
    return [train_workers(train)] + ([reference_actors(reference)] if reference else [])


def check_local_fit(stages: Sequence[Reservation], hint: str = "") -> None:
    """Stages that must run at once on this local Ray: fail now, naming the keys, when they
    do not fit side by side (call it only off a cluster). `hint`: another way out."""
    import ray

    have = ray.cluster_resources()
    for name in dict.fromkeys(k for s in stages for k in s.each):
        need = sum(s.count * s.each.get(name, 0.0) for s in stages)
        if need > have.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"{' plus '.join(s.what for s in stages)} need {need:g} {name}, the local Ray "
                f"has {have.get(name, 0.0):g}: lower them, {hint}or set ray.address to a "
                f"cluster")


def check_stream_fit(train: TrainConfig, reference: Optional[ReferenceConfig],
                     actors: ActorsConfig) -> None:
    """Stream mode runs the Train workers (and the reference actors, if any) and the guard
    pool at once: on a fixed local Ray they must fit side by side."""
    check_local_fit(training_reservations(train, reference) + [guard_actors(actors)],
                    hint="use scoring.mode=precompute (stream trains and scores at once), ")
