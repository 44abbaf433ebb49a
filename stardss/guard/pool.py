"""A pool of Ray actors that run every guardrail of a job over response prefixes.

Each `GuardActor` holds one copy of all guardrails (a model guardrail loads once per actor, not
once per call). `GuardPool` streams batches of requests to the actors with bounded
backpressure and fails loudly, naming actor and batch, when an actor dies or stops answering.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf

from ..config.schema import GuardrailConfig, RuleConfig, ScoringConfig
from ..raytools import RemoteError, get, wait_ready
from .base import PrefixItem, build_guardrail


class GuardPoolError(RemoteError):
    """A guard actor died, failed or did not answer within scoring.timeout_s."""


@dataclass
class ScoreRequest:
    key: str
    """Caller's id for the example; results are returned under it."""
    prompt: str
    response: str
    """The whole assistant response."""
    cuts: list[int]
    """Prefix k is response[:cuts[k]], shortest first."""

    @property
    def prefixes(self) -> list[str]:
        return [self.response[:c] for c in self.cuts]


def guard_config_to_dict(cfg: GuardrailConfig | DictConfig | dict) -> dict:
    """Plain-dict form of a guardrail config: what crosses the Ray boundary."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)  # type: ignore[arg-type]
    return dict(cfg)


def guard_config_from_dict(d: dict) -> GuardrailConfig:
    rules = [RuleConfig(**r) for r in d.get("rules", [])]
    return GuardrailConfig(**{**d, "rules": rules})


@ray.remote
class GuardActor:
    """Holds every guardrail of the job; scores batches of requests."""

    def __init__(self, guard_cfgs: list[dict]):
        self.guards = [build_guardrail(guard_config_from_dict(d)) for d in guard_cfgs]

    def fingerprints(self) -> list[str]:
        return [g.fingerprint for g in self.guards]

    def score_batch(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """For each request an array (n_guardrails, len(cuts)) of P(safe), float64."""
        items = [PrefixItem(r.prompt, r.response, r.cuts) for r in requests]
        out = [np.empty((len(self.guards), len(r.cuts))) for r in requests]
        for g, guard in enumerate(self.guards):
            scores = guard.score_prefixes(items)
            for i, (req, arr) in enumerate(zip(requests, scores)):
                arr = np.asarray(arr, dtype=np.float64)
                if arr.shape != (len(req.cuts),):
                    raise ValueError(f"guardrail {guard.name!r} returned shape {arr.shape} for "
                                     f"{len(req.cuts)} prefixes of request {req.key!r}")
                out[i][g] = arr
        return out


class _Batch:
    __slots__ = ("index", "requests")

    def __init__(self, index: int, requests: list[ScoreRequest]):
        self.index, self.requests = index, requests

    def __str__(self) -> str:
        keys = f"{self.requests[0].key!r}..{self.requests[-1].key!r}"
        return f"batch {self.index} ({len(self.requests)} requests, keys {keys})"


class GuardPool:
    """`scoring.actors` GuardActors fed asynchronously; use as a context manager.

    Ray must already be initialised by the caller; the pool never starts or stops Ray.
    """

    def __init__(self, guard_cfgs: Iterable[GuardrailConfig | DictConfig | dict],
                 scoring: ScoringConfig):
        self._cfgs = [guard_config_to_dict(c) for c in guard_cfgs]
        if not self._cfgs:
            raise ValueError("GuardPool needs at least one guardrail")
        self.batch_size = int(scoring.batch_size)
        self.max_in_flight = int(scoring.max_in_flight)
        self.timeout_s = float(scoring.timeout_s)
        self._actors: list[Any] = []
        opts = dict(num_cpus=scoring.num_cpus, num_gpus=scoring.num_gpus, name=None)
        try:
            self._actors = [GuardActor.options(**opts).remote(self._cfgs)
                            for _ in range(int(scoring.actors))]
            self._wait_started()
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._actors)

    @property
    def actors(self) -> list[Any]:
        """The actor handles, index = the number error messages use."""
        return list(self._actors)

    def _wait_started(self) -> None:
        # One wait for all: actors start in parallel, so waiting timeout_s for each in turn
        # would let n stuck actors take n * timeout_s.
        refs = [a.__ray_ready__.remote() for a in self._actors]
        try:
            ready, _ = wait_ready(refs, timeout_s=self.timeout_s, what="guard actors start",
                                  num_returns=len(refs))
        except RemoteError:
            ready = []  # reported below, per actor, with a hint
        for i, ref in enumerate(refs):
            if ref not in ready:
                raise GuardPoolError(
                    f"guard actor {i} not started within {self.timeout_s:g}s: not enough free "
                    f"CPUs/GPUs for {self.size} x (num_cpus, num_gpus), or a slow model load?")
            try:
                get(ref, timeout_s=self.timeout_s, what=f"guard actor {i} start")
            except RemoteError as err:  # the constructor raised, e.g. a bad rule pattern
                raise GuardPoolError(str(err)) from err.__cause__

    def fingerprints(self) -> list[str]:
        """The guardrails' fingerprints, as actor 0 loaded them (every actor loads the same)."""
        try:
            return get(self._actors[0].fingerprints.remote(), timeout_s=self.timeout_s,
                       what="guard actor 0 fingerprints")
        except RemoteError as err:
            raise GuardPoolError(str(err)) from err.__cause__

    def score(self, requests: Sequence[ScoreRequest],
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """key -> (n_guardrails, len(cuts)) P(safe), in request order.

        Raises GuardPoolError on the first dead, failing or overdue batch; batches still
        queued on other actors keep running, so close the pool after an error.
        """
        keys = [r.key for r in requests]
        dups = [k for k, n in Counter(keys).items() if n > 1]
        if dups:
            raise ValueError(f"duplicate request keys ({len(dups)}), e.g. {dups[:5]}")
        todo = deque(_Batch(i // self.batch_size, list(requests[i:i + self.batch_size]))
                     for i in range(0, len(requests), self.batch_size))
        # Per actor, its in-flight (ref, batch) in submission order: a sequential actor runs
        # them in that order, so only the head is running and its clock is the one that counts.
        queues: list[deque[tuple[ray.ObjectRef, _Batch]]] = [deque() for _ in self._actors]
        head_since = [0.0] * self.size
        owner: dict[ray.ObjectRef, int] = {}
        results: dict[str, np.ndarray] = {}
        total = len(requests)

        def assign() -> None:
            # The one place batches meet actors (replacing dead actors would hook in here).
            for a, actor in enumerate(self._actors):
                while todo and len(queues[a]) < self.max_in_flight:
                    batch = todo.popleft()
                    ref = actor.score_batch.remote(batch.requests)
                    if not queues[a]:
                        head_since[a] = time.monotonic()
                    queues[a].append((ref, batch))
                    owner[ref] = a

        assign()
        while owner:
            now = time.monotonic()
            busy = [a for a in range(self.size) if queues[a]]
            wait_s = max(min(head_since[a] + self.timeout_s for a in busy) - now, 0.0)
            try:
                ready, _ = wait_ready(list(owner), timeout_s=wait_s, what="guard pool")
            except RemoteError:
                self._raise_overdue(queues, head_since)
                continue  # woke a hair before the deadline: wait again
            for ref in ready:
                a = owner.pop(ref)
                batch = next(b for r, b in queues[a] if r == ref)
                queues[a] = deque((r, b) for r, b in queues[a] if r != ref)
                head_since[a] = time.monotonic()
                try:
                    arrays = get(ref, timeout_s=self.timeout_s, what=f"guard actor {a}, {batch}")
                except RemoteError as err:
                    raise GuardPoolError(str(err)) from err.__cause__
                for req, arr in zip(batch.requests, arrays):
                    # Copy out of the object store: callers may keep or modify the arrays.
                    results[req.key] = np.array(arr, dtype=np.float64, copy=True)
                if progress is not None:
                    progress(len(results), total)
            assign()
        return {k: results[k] for k in keys}

    def _raise_overdue(self, queues, head_since) -> None:
        now = time.monotonic()
        for a, q in enumerate(queues):
            if q and now - head_since[a] >= self.timeout_s:
                raise GuardPoolError(f"guard actor {a}, {q[0][1]}: no result within "
                                     f"{self.timeout_s:g}s (actor stuck or overloaded)")

    def close(self) -> None:
        if ray.is_initialized():  # after ray.shutdown the actors are gone anyway
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> GuardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
