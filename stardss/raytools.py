"""Bounded waits on Ray and the one actor-group lifecycle: every remote wait in stardss goes
through here.

A bare `ray.get` on a dead or stuck actor can block forever; these helpers always take a
timeout and turn Ray's zoo of failures into one `RemoteError` whose message says what was
being waited for, so the run fails with a sentence instead of a hang or a raw traceback.
`ActorGroup` starts actors with a bounded readiness wait, probes, replaces and closes them.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

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


def lower_priority(nice: int) -> None:
    """Give every thread of this process the Unix niceness `nice` (threads started later
    inherit it). On Linux niceness is per thread, and Ray runs actor code beside threads of
    its own, so the whole process is set thread by thread; elsewhere it is per process."""
    import os

    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))


class Starting:
    """An actor asked for but not ready yet: its readiness call (`probe`) is outstanding."""

    def __init__(self, actor: Any, number: int, ready_ref: ray.ObjectRef, why: str):
        self.actor, self.number, self.ready_ref, self.why = actor, number, ready_ref, why
        self.since = time.monotonic()


class Member:
    """A ready actor of a group: its handle, the number messages call it by, and what its
    readiness probe answered (e.g. the Ray node it runs on)."""

    def __init__(self, actor: Any, number: int, info: Any):
        self.actor, self.number, self.info = actor, number, info


class ActorGroup:
    """Ray actors of one class, all started, probed, replaced and closed the same way: the one
    lifecycle under the guardrail pool and the reference actor group.

    Each actor reserves what it computes with: `num_cpus` / `num_gpus` / custom `resources`,
    and its math and tokenizer thread pools are capped at its CPUs (Ray caps torch's OpenMP
    threads, not the fast tokenizers' Rayon pool, which otherwise spans every core of the node
    and slows whatever else runs there). An actor is ready when its `probe` method answers,
    which it does once its constructor (a model load) has finished; no wait is unbounded.
    """

    def __init__(self, actor_class: Any, args: Sequence[Any] = (), *, num_cpus: float,
                 num_gpus: float = 0.0, resources: Optional[dict] = None,
                 start_timeout_s: float, what: str, probe: str = "__ray_ready__"):
        threads = str(max(1, int(num_cpus)))
        self.options = dict(num_cpus=num_cpus, num_gpus=num_gpus,
                            resources=dict(resources or {}),
                            runtime_env={"env_vars": {"OMP_NUM_THREADS": threads,
                                                      "RAYON_NUM_THREADS": threads}})
        self.actor_class, self.args = actor_class, tuple(args)
        self.start_timeout_s, self.what, self.probe = start_timeout_s, what, probe
        self.starting: list[Starting] = []
        self.members: list[Member] = []
        self.started_count = 0  # actors ever started: an actor's number in messages

    def name(self, number: int) -> str:
        return f"{self.what} {number}"

    def spawn(self, why: str = "") -> Starting:
        """Start one actor without waiting for it (see `accept`)."""
        actor = self.actor_class.options(**self.options).remote(*self.args)
        st = Starting(actor, self.started_count, getattr(actor, self.probe).remote(), why)
        self.started_count += 1
        self.starting.append(st)
        return st

    def accept(self, st: Starting) -> Member:
        """A started actor whose probe is ready joins the group; RemoteError (and the actor is
        killed) when its constructor raised."""
        self.starting.remove(st)
        try:
            info = get(st.ready_ref, timeout_s=self.start_timeout_s,
                       what=f"{self.name(st.number)} start")
        except RemoteError:
            ray.kill(st.actor, no_restart=True)
            raise
        member = Member(st.actor, st.number, info)
        self.members.append(member)
        return member

    def start(self, n: int, hint: str = "") -> list[Member]:
        """Start `n` actors and wait for them (`wait_started`)."""
        for _ in range(n):
            self.spawn("start")
        return self.wait_started(hint)

    def wait_started(self, hint: str = "") -> list[Member]:
        """Wait for every actor still starting, all at once (they start in parallel: n stuck
        actors cost one start_timeout_s, not n); RemoteError naming the first that did not
        start (with `hint`: what to check) or whose constructor raised."""
        pending = list(self.starting)
        refs = [st.ready_ref for st in pending]
        try:
            ready, _ = wait_ready(refs, timeout_s=self.start_timeout_s, num_returns=len(refs),
                                  what=f"{len(refs)} x {self.what} start")
        except RemoteError:
            ready = []  # reported below, per actor, with the hint
        members = []
        for st in pending:
            if st.ready_ref not in ready:
                raise RemoteError(f"{self.name(st.number)} not started within "
                                  f"{self.start_timeout_s:g}s{': ' + hint if hint else ''}")
            members.append(self.accept(st))
        return members

    def discard(self, st: Starting) -> None:
        """Give up on an actor still starting."""
        if st in self.starting:
            self.starting.remove(st)
        ray.kill(st.actor, no_restart=True)

    def remove(self, member: Member) -> None:
        """Kill a member (dead, stuck or no longer needed)."""
        if member in self.members:
            self.members.remove(member)
        ray.kill(member.actor, no_restart=True)

    def replace(self, member: Member, why: str) -> Starting:
        """Kill a dead or stuck member and start its replacement (not waited for)."""
        self.remove(member)
        return self.spawn(why)

    def alive(self, member: Member, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
        return actor_alive(member.actor, timeout_s)

    def close(self) -> None:
        if ray.is_initialized():  # after ray.shutdown the actors are gone anyway
            for actor in [m.actor for m in self.members] + [s.actor for s in self.starting]:
                ray.kill(actor, no_restart=True)
        self.members, self.starting = [], []


# What a node is called in messages: its compute and custom resources, not Ray's bookkeeping.
_NODE_BOOKKEEPING = ("memory", "object_store_memory")


def alive_nodes() -> dict[str, dict]:
    """Node id -> `ray.nodes()` entry of every live node: a snapshot to compare with later
    (`nodes_lost_since`)."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def nodes_lost_since(before: dict[str, dict]) -> list[dict]:
    """The entries (as `before` saw them, resources included) of the nodes alive then and
    not alive now."""
    now = alive_nodes()
    return [n for node_id, n in before.items() if node_id not in now]


def node_resources(node: dict) -> dict[str, float]:
    """What a node advertises for work (CPU, GPU, custom resources such as `trainer`)."""
    return {k: v for k, v in (node.get("Resources") or {}).items()
            if not k.startswith(("node:", "accelerator_type:")) and k not in _NODE_BOOKKEEPING}


def node_label(node: dict) -> str:
    """'node 1a2b3c4d5e6f (10.0.0.3; CPU: 8, trainer: 8)': what a person recognises a node by."""
    res = ", ".join(f"{k}: {v:g}" for k, v in sorted(node_resources(node).items()))
    return f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress', '?')}; {res or '-'})"


def room_for(bundle: dict[str, float], nodes: Sequence[dict]) -> int:
    """How many `bundle`s the nodes' total resources hold, one bundle within one node (what
    is free now may be less: other work holds some)."""
    total = 0
    for node in nodes:
        res = node_resources(node)
        total += min((int(res.get(k, 0.0) // v) for k, v in bundle.items() if v > 0),
                     default=0)
    return total


def on_this_node() -> dict:
    """Actor options that keep an actor on the caller's node (hard affinity): state that
    lives and dies with the driver (e.g. the step feed) must not sit on a node that may be
    lost while the driver goes on."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=False)}
