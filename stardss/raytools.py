"""Bounded waits on Ray: every remote wait in stardss goes through here.

A bare `ray.get` on a dead or stuck actor can block forever; these helpers always take a
timeout and turn Ray's zoo of failures into one `RemoteError` whose message says what was
being waited for, so the run fails with a sentence instead of a hang or a raw traceback.
"""
from __future__ import annotations

from typing import Any, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

# Liveness probes only need a round trip to the actor; a live actor answers in milliseconds.
_PROBE_TIMEOUT_S = 5.0


class RemoteError(RuntimeError):
    """A remote call failed, died or did not answer in time."""


def wait_ready(refs: Sequence[ray.ObjectRef], *, timeout_s: float, what: str,
               num_returns: int = 1) -> tuple[list[ray.ObjectRef], list[ray.ObjectRef]]:
    """`ray.wait` that raises instead of returning empty-handed after `timeout_s`."""
    if not refs:
        raise ValueError(f"{what}: nothing to wait for")
    ready, pending = ray.wait(list(refs), num_returns=min(num_returns, len(refs)),
                              timeout=timeout_s)
    if not ready:
        raise RemoteError(f"{what}: no result within {timeout_s:g}s")
    return ready, pending


def poll(refs: Sequence[ray.ObjectRef], *, timeout_s: float) -> list[ray.ObjectRef]:
    """The refs of `refs` ready within `timeout_s` (at least one, or none after the timeout)."""
    if not refs:
        return []
    ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(timeout_s, 0.0))
    if ready and len(refs) > 1:  # and whatever else is ready by now
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return ready


def get(refs: Any, *, timeout_s: float, what: str) -> Any:
    """`ray.get` with a timeout; every Ray failure becomes a RemoteError naming `what`."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise RemoteError(f"{what}: no result within {timeout_s:g}s") from None
    except RayError as err:
        # RayTaskError, RayActorError/ActorDiedError, WorkerCrashedError, ObjectLostError, ...
        raise RemoteError(f"{what}: {summarize(err)}") from err


def actor_alive(actor: Any, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """True when the actor answers a no-op call; a dead actor fails the call at once.

    ray.kill is asynchronous: for ~10 ms after it returns, a probe may still succeed.
    """
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
        return True
    except RayError:  # ActorDiedError, ActorUnavailableError, GetTimeoutError, ...
        return False


def summarize(err: BaseException) -> str:
    """One line for a Ray failure: Ray's messages carry remote tracebacks and actor ids."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        return f"{type(err.cause).__name__}: {err.cause}"  # the exception the remote code raised
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if getattr(err, "actor_init_failed", False):  # ActorDiedError: last line is the exception
        return f"actor constructor failed: {lines[-1]}"
    # Ray puts what happened first and why last (e.g. "...killed by `ray.kill`."); the
    # middle is actor ids, pids and namespaces.
    why = f" {lines[-1]}" if len(lines) > 1 else ""
    return f"{type(err).__name__}: {lines[0]}{why}"
