"""Bookkeeping of one `GuardPool.stream()` call: batches, actor slots, metrics.

Kept apart from pool.py so the scheduling loop there reads as policy: which batch goes where,
when an actor is replaced, added or stopped. Nothing here talks to Ray.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import islice
from typing import Any, Iterable, Optional


class Batch:
    __slots__ = ("index", "requests")

    def __init__(self, index: int, requests: list):
        self.index, self.requests = index, requests

    def __str__(self) -> str:
        keys = f"{self.requests[0].key!r}..{self.requests[-1].key!r}"
        return f"batch {self.index} ({len(self.requests)} requests, keys {keys})"


class Slot:
    """One actor of the pool: its handle, the number messages call it by, its in-flight work.

    A Ray actor runs its calls in submission order, so only the head of `queue` is running
    and `head_since` (when it became the head) is the clock a stuck-batch timeout counts on.
    """

    def __init__(self, member: Any):
        self.member = member  # the ActorGroup member (stardss.raytools.Member)
        self.actor, self.number = member.actor, member.number
        self.queue: deque[tuple[Any, Batch]] = deque()
        self.head_since = time.monotonic()
        self.idle_since = time.monotonic()

    @property
    def name(self) -> str:
        return f"guard actor {self.number}"

    def push(self, ref: Any, batch: Batch) -> None:
        if not self.queue:
            self.head_since = time.monotonic()
        self.queue.append((ref, batch))

    def pop(self, ref: Any) -> Batch:
        """Remove a finished call; the next one in the queue starts running now."""
        batch = next(b for r, b in self.queue if r == ref)
        self.queue = deque((r, b) for r, b in self.queue if r != ref)
        self.head_since = self.idle_since = time.monotonic()
        return batch

    def overdue(self, now: float, timeout_s: float) -> bool:
        return bool(self.queue) and now - self.head_since >= timeout_s


class Run:
    """State of one stream()/score() call: batches read so far from the caller's requests, the
    queue of those not yet sent, which are done, counters, metrics.

    Requests are read lazily (`fill`), so a caller can stream more rows than fit in memory and
    scoring never runs further ahead than the actors can take.
    """

    def __init__(self, requests: Iterable, batch_size: int, total_rows: Optional[int] = None):
        self._source = iter(requests)
        self.batch_size = batch_size
        self.exhausted = False
        self.keys: set[str] = set()
        self.todo: deque[Batch] = deque()
        self.n_batches = 0
        self.done: set[int] = set()
        self.total_rows = total_rows
        self.rows_done = 0
        self.restarts = 0
        self.started = self.last_progress = time.monotonic()
        self.metrics: list[dict] = []

    def fill(self, queued: int) -> None:
        """Read requests until `queued` batches wait unsent or the caller's requests run out."""
        while not self.exhausted and len(self.todo) < queued:
            requests = list(islice(self._source, self.batch_size))
            if len(requests) < self.batch_size:
                self.exhausted = True
            if not requests:
                break
            for r in requests:
                if r.key in self.keys:
                    raise ValueError(f"duplicate request key {r.key!r}")
                self.keys.add(r.key)
            self.todo.append(Batch(self.n_batches, requests))
            self.n_batches += 1

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.todo and len(self.done) == self.n_batches

    @property
    def batches_left(self) -> int:
        """Batches read but not done (more may still come from the caller)."""
        return self.n_batches - len(self.done)

    def requeue(self, batches: list[Batch]) -> None:
        """Put unfinished batches back at the front, lowest index first."""
        for b in sorted((b for b in batches if b.index not in self.done),
                        key=lambda b: b.index, reverse=True):
            self.todo.appendleft(b)

    def finish(self, batch: Batch, *, actors: int, in_flight: int, latency_s: float) -> None:
        now = time.monotonic()
        self.done.add(batch.index)
        self.rows_done += len(batch.requests)
        self.last_progress = now
        self.metrics.append({
            "time": time.time(), "batch": batch.index, "actors": actors,
            "queue": len(self.todo), "in_flight": in_flight,
            "latency_s": latency_s,
            "rows_per_s": self.rows_done / max(now - self.started, 1e-9),
            "restarts": self.restarts})
