"""A pool of Ray actors that run every guardrail of a job over response prefixes.

Each `GuardActor` holds one copy of all guardrails (a model guardrail loads once per actor, not
once per call). `GuardPool` streams batches of requests to the actors with bounded
backpressure. An actor that dies or sits on a batch past `scoring.timeout_s` is killed and
replaced (up to `scoring.max_restarts` per call) and its unfinished batches are scored again;
while batches queue up the pool grows to `scoring.actors.max`, and shrinks back to
`actors.min` when idle (on a cluster it also asks the Ray autoscaler for room for them). When
it cannot go on it fails loudly, naming actor and batch.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import ray
from ray.exceptions import RayTaskError

from ..cluster.resources import actor_resources
from ..config.schema import AuthorsTransformConfig, GuardrailConfig, ScoringConfig
from ..raytools import ActorGroup, Member, RemoteError, Starting, get, lower_priority, poll
from .base import ScoreRequest
from .pool_state import Run, Slot
from .registry import build_guardrail

log = logging.getLogger(__name__)


class GuardPoolError(RemoteError):
    """Guard actors kept dying or sticking past max_restarts, a batch failed in the guardrail
    code, no batch finished within progress_timeout_s, or the pool could not start."""


@ray.remote
class GuardActor:
    """Holds every guardrail of the job; scores batches of requests."""

    def __init__(self, guard_cfgs: list[GuardrailConfig], nice: int = 0,
                 transform: AuthorsTransformConfig | None = None):
        if nice:
            lower_priority(nice)  # before the model loads and starts its compute threads
        self.guards = [build_guardrail(cfg, transform) for cfg in guard_cfgs]

    def fingerprints(self) -> list[str]:
        return [g.fingerprint for g in self.guards]

    def node_id(self) -> str:
        """The Ray node this actor runs on (the pool's readiness probe: it answers once
        every guardrail has loaded)."""
        return ray.get_runtime_context().get_node_id()

    def score_batch(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """For each request an array (n_guardrails, len(cuts)) of P(safe), float64."""
        out = [np.empty((len(self.guards), len(r.cuts))) for r in requests]
        for g, guard in enumerate(self.guards):
            scores = guard.score_prefixes(requests)
            for i, (req, arr) in enumerate(zip(requests, scores)):
                arr = np.asarray(arr, dtype=np.float64)
                if arr.shape != (len(req.cuts),):
                    raise ValueError(f"guardrail {guard.name!r} returned shape {arr.shape} for "
                                     f"{len(req.cuts)} prefixes of request {req.key!r}")
                out[i][g] = arr
        return out


class GuardPool:
    """GuardActors (`scoring.actors.min` to `.max`) fed asynchronously; use as a context manager.

    Ray must already be initialised by the caller; the pool never starts or stops Ray.
    `metrics` holds one dict per batch finished by the last `score()` call.
    """

    def __init__(self, guard_cfgs: Iterable[GuardrailConfig], scoring: ScoringConfig,
                 autoscaler: bool = False, transform: AuthorsTransformConfig | None = None):
        cfgs = list(guard_cfgs)
        if not cfgs:
            raise ValueError("GuardPool needs at least one guardrail")
        a = scoring.actors
        self.min_actors, self.max_actors = a.min, max(a.max, a.min)
        self.batch_size = a.batch_size
        self.max_in_flight = scoring.max_in_flight
        self.timeout_s = scoring.timeout_s
        self.max_restarts = scoring.max_restarts
        self.progress_timeout_s = scoring.progress_timeout_s
        self.idle_s = scoring.idle_s
        # transform: star.transform=authors (stardss.star.transform.guard_transform), else raw.
        self.group = ActorGroup(GuardActor, (cfgs, a.nice, transform), num_cpus=a.num_cpus,
                                num_gpus=a.num_gpus, resources=a.resources,
                                start_timeout_s=scoring.start_timeout_s, what="guard actor",
                                probe="node_id")
        # On a cluster: tell the autoscaler what the pool wants, so nodes for guardrail actors
        # come up before the actors would sit pending.
        self._autoscaler = autoscaler
        self._bundle = {k: v for k, v in actor_resources(a).items() if v}
        self._requested = -1
        self._slots: list[Slot] = []
        self.nodes: dict[int, str] = {}  # actor number -> Ray node id, of every actor started
        self._grow_after = 0.0  # after an actor failed to start, wait before adding another
        self.metrics: list[dict] = []
        try:
            for _ in range(self.min_actors):
                self._start_actor("pool start")
            try:
                members = self.group.wait_started(
                    f"no room for {self.min_actors} x {self._bundle or 'nothing'} (scoring."
                    f"actors num_cpus, num_gpus, resources), or a slow model load?")
            except RemoteError as err:  # e.g. a bad rule pattern, or no room
                raise GuardPoolError(str(err)) from err.__cause__
            for m in members:
                self._join(m)
        except BaseException:
            self.close()
            raise

    @property
    def start_timeout_s(self) -> float:
        """Longest an actor may take to start (scoring.start_timeout_s)."""
        return self.group.start_timeout_s

    @start_timeout_s.setter
    def start_timeout_s(self, seconds: float) -> None:
        self.group.start_timeout_s = seconds

    @property
    def _starting(self) -> list[Starting]:
        return self.group.starting

    @property
    def size(self) -> int:
        """Ready actors (not counting ones still starting)."""
        return len(self._slots)

    @property
    def node_ids(self) -> list[str]:
        """The Ray nodes the pool's actors have run on, each once."""
        return sorted(set(self.nodes.values()))

    @property
    def actors(self) -> list[Any]:
        """The ready actors' handles; at first, index = the number error messages use."""
        return [s.actor for s in self._slots]

    def _start_actor(self, why: str) -> None:
        self.group.spawn(why)
        self._request_resources()

    def _join(self, member: Member) -> None:
        self.nodes[member.number] = member.info  # what the probe answers: the node id
        self._slots.append(Slot(member))

    def _request_resources(self) -> None:
        """Ask the autoscaler for room for every actor the pool has or is starting (a
        standing request that replaces the previous one; an empty one withdraws it)."""
        want = len(self._slots) + len(self._starting)
        if not self._autoscaler or want == self._requested or not ray.is_initialized():
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(self._bundle) for _ in range(want)] or [])
        self._requested = want

    def fingerprints(self) -> list[str]:
        """The guardrails' fingerprints, as one actor loaded them (every actor loads the same)."""
        slot = self._slots[0]
        try:
            return get(slot.actor.fingerprints.remote(), timeout_s=self.timeout_s,
                       what=f"{slot.name} fingerprints")
        except RemoteError as err:
            raise GuardPoolError(str(err)) from err.__cause__

    def score(self, requests: Sequence[ScoreRequest],
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """key -> (n_guardrails, len(cuts)) P(safe), in request order.

        Dead or stuck actors are replaced and their batches rescored; raises GuardPoolError
        when that is not enough (see the class). Close the pool after an error.
        """
        keys = [r.key for r in requests]
        dups = [k for k, n in Counter(keys).items() if n > 1]
        if dups:
            raise ValueError(f"duplicate request keys ({len(dups)}), e.g. {dups[:5]}")
        results = dict(self.stream(requests, progress, total=len(requests)))
        return {k: results[k] for k in keys}

    def stream(self, requests: Iterable[ScoreRequest],
               progress: Callable[[int, int], None] | None = None,
               total: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(key, (n_guardrails, len(cuts)) P(safe)) for every request, as batches finish.

        Requests are read only as far as the actors can take them (a few batches per actor
        queued), and while the caller holds a yielded result nothing new is sent: a slow
        consumer slows scoring down instead of piling results up (backpressure). Every key
        comes out exactly once, whatever actors die on the way. `total` (rows) feeds progress.
        """
        run = Run(requests, self.batch_size, total)
        self.metrics = run.metrics
        refs: dict[ray.ObjectRef, Slot] = {}  # every call in flight -> its actor
        out: list[tuple[str, np.ndarray]] = []
        try:
            while True:
                # Enough unsent batches that a backlog shows (and grows the pool) when every
                # actor is full, never the whole input.
                run.fill(self.max_actors * self.max_in_flight)
                if run.finished:
                    self._settle()
                    break
                self._assign(run, refs)
                self._grow(run)
                now = time.monotonic()
                waiting = list(refs) + [st.ready_ref for st in self._starting]
                wait_s = max(self._next_deadline(run, now) - now, 0.0) + 0.01
                ready = poll(waiting, timeout_s=wait_s)
                if not waiting:
                    time.sleep(min(wait_s, 0.1))
                for ref in ready:
                    if ref in refs:
                        self._collect(ref, refs.pop(ref), run, refs, out, progress)
                    elif any(st.ready_ref == ref for st in self._starting):
                        self._started(ref)
                if out:
                    paused = time.monotonic()
                    yield from out
                    out.clear()
                    # Time the caller spent with the results is not the pool stalling.
                    run.last_progress += time.monotonic() - paused
                self._check_clocks(run, refs)
                self._shrink(run, final=False)
        finally:
            self._shrink(run, final=True)

    def _assign(self, run: Run, refs: dict) -> None:
        # The one place batches meet actors.
        for slot in self._slots:
            while run.todo and len(slot.queue) < self.max_in_flight:
                batch = run.todo.popleft()
                ref = slot.actor.score_batch.remote(batch.requests)
                slot.push(ref, batch)
                refs[ref] = slot

    def _grow(self, run: Run) -> None:
        """Batches left over after every ready actor is full: ask for more actors."""
        if not run.todo or time.monotonic() < self._grow_after:
            return
        want = math.ceil(len(run.todo) / self.max_in_flight) - len(self._starting)
        room = self.max_actors - len(self._slots) - len(self._starting)
        for _ in range(min(want, room)):
            self._start_actor(f"scale-up, {len(run.todo)} batches queued")

    def _started(self, ref: ray.ObjectRef) -> None:
        st = next(s for s in self._starting if s.ready_ref == ref)
        try:
            member = self.group.accept(st)
        except RemoteError as err:
            self._drop_starting(st, str(err))
            return
        self._join(member)

    def _drop_starting(self, st: Starting, why: str) -> None:
        log.warning("guard actor %d (%s) dropped, the pool goes on with %d actors: %s",
                    st.number, st.why, len(self._slots), why)
        self.group.discard(st)
        self._grow_after = time.monotonic() + self.start_timeout_s

    def _collect(self, ref, slot: Slot, run: Run, refs: dict, out: list, progress) -> None:
        latency_s = time.monotonic() - slot.head_since
        batch = slot.pop(ref)
        try:
            arrays = get(ref, timeout_s=self.timeout_s, what=f"{slot.name}, {batch}")
        except RemoteError as err:
            if isinstance(err.__cause__, RayTaskError):  # the guardrail code raised: no retry
                raise GuardPoolError(str(err)) from err.__cause__
            slot.queue.appendleft((ref, batch))  # so that it is requeued with the rest
            self._replace(slot, run, refs, str(err))
            return
        if batch.index in run.done:  # a late copy of a batch already accepted
            return
        for req, arr in zip(batch.requests, arrays):
            # Copy out of the object store: callers may keep or modify the arrays.
            out.append((req.key, np.array(arr, dtype=np.float64, copy=True)))
        run.finish(batch, actors=len(self._slots), in_flight=len(refs), latency_s=latency_s)
        if progress is not None:
            progress(run.rows_done, run.total_rows if run.total_rows is not None
                     else len(run.keys))

    def _replace(self, slot: Slot, run: Run, refs: dict, reason: str) -> None:
        """Kill a dead or stuck actor, requeue its batches, start a replacement."""
        self._slots.remove(slot)
        for r, _ in slot.queue:
            refs.pop(r, None)  # a late result of the killed actor is never read
        run.requeue([b for _, b in slot.queue])
        if run.restarts >= self.max_restarts:
            self.group.remove(slot.member)
            raise GuardPoolError(f"{reason} (restarts exhausted: {run.restarts} replacement "
                                 f"actors used of scoring.max_restarts={self.max_restarts})")
        run.restarts += 1
        log.warning("%s; replacing it (restart %d of %d)", reason, run.restarts,
                    self.max_restarts)
        self.group.replace(slot.member, f"replacing {slot.name}")
        self._request_resources()

    def _next_deadline(self, run: Run, now: float) -> float:
        times = [run.last_progress + self.progress_timeout_s]
        times += [s.head_since + self.timeout_s for s in self._slots if s.queue]
        times += [st.since + self.start_timeout_s for st in self._starting]
        if not run.todo and len(self._slots) > self.min_actors:
            times += [s.idle_since + self.idle_s for s in self._slots if not s.queue]
        if run.todo and self._grow_after > now:
            times.append(self._grow_after)
        return min(times)

    def _check_clocks(self, run: Run, refs: dict) -> None:
        now = time.monotonic()
        for slot in [s for s in self._slots if s.overdue(now, self.timeout_s)]:
            self._replace(slot, run, refs, f"{slot.name}, {slot.queue[0][1]}: no result within "
                                           f"{self.timeout_s:g}s (actor stuck or overloaded)")
        for st in [st for st in self._starting if now - st.since >= self.start_timeout_s]:
            self._drop_starting(st, f"not started within {self.start_timeout_s:g}s (not enough "
                                    f"free CPUs/GPUs, or a slow model load?)")
        left = run.batches_left
        if left and now - run.last_progress >= self.progress_timeout_s:
            running = [f"{s.name}: {s.queue[0][1]}" for s in self._slots if s.queue]
            raise GuardPoolError(
                f"guard pool: no batch finished for {self.progress_timeout_s:g}s "
                f"(scoring.progress_timeout_s); {left} batches left, running: "
                f"{'; '.join(running) or 'none'}; {run.restarts} restarts used")
        if left and not self._slots and not self._starting:
            raise GuardPoolError(f"guard pool: no actor left and none could start; {left} "
                                 f"batches left, {run.restarts} restarts used")

    def _settle(self) -> None:
        """After a finished run, leave `actors.min` ready actors for the next one: a
        replacement still starting (the work ended first) is waited for, not cancelled; extra
        starts are cancelled. An actor that cannot start is dropped (the next run grows anew)."""
        for st in self._starting[max(self.min_actors - len(self._slots), 0):]:
            self.group.discard(st)
        while self._starting:
            now = time.monotonic()
            first = min(self._starting, key=lambda st: st.since)
            ready = poll([st.ready_ref for st in self._starting],
                         timeout_s=first.since + self.start_timeout_s - now)
            for ref in ready:
                self._started(ref)
            if not ready:
                self._drop_starting(first, f"not started within {self.start_timeout_s:g}s")

    def _shrink(self, run: Run, final: bool) -> None:
        """Stop idle actors above actors.min (all of them, and pending starts, when final)."""
        if final:
            for st in list(self._starting):
                self.group.discard(st)
        if run.todo:
            return
        now = time.monotonic()
        for slot in reversed(list(self._slots)):
            if len(self._slots) <= self.min_actors:
                break
            if not slot.queue and (final or now - slot.idle_since >= self.idle_s):
                self.group.remove(slot.member)
                self._slots.remove(slot)
        self._request_resources()

    def close(self) -> None:
        self.group.close()
        self._slots = []
        self._request_resources()

    def __enter__(self) -> GuardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
