"""Stream mode: score rows in the order training will use them and hand each optimizer step to
the trainer's feed as soon as every row in it is weighted.

Runs in a thread of the driver beside `TorchTrainer.fit()`:

    plan order -> cache hits | GuardPool.stream (actors) -> StarRecord -> weighted TrainRow
               -> StepFeed.put(step)   (waits while `scoring.prefetch_steps` steps are unconsumed)

Rows are requested in order of first use, so step 1 is ready after its own rows are scored,
not after the whole dataset. Each row is scored once: later epochs reuse its weights.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Sequence

from ..raytools import RemoteError, get, poll
from .score import StarRecord, star_items, star_record, weighted_row


class ProducerStopped(Exception):
    """The trainer ended first (it failed); the producer stops quietly."""


class StepProducer:
    """Fills a StepFeed with the scored steps of `plan`; `run()` is the thread's body."""

    def __init__(self, rows, encoded, plan: list[list[Optional[int]]], open_pool, star_cfg,
                 chunk_fp: str, feed, put_timeout_s: float, cache=None,
                 full_response_only: bool = False,
                 progress: Optional[Callable[[int, int], None]] = None,
                 on_metrics: Optional[Callable[[list[dict]], None]] = None):
        """`open_pool()` makes the GuardPool (in the thread, so actors load while Ray Train
        starts); `on_metrics` gets its per-batch metrics as they come (for the tracker);
        `full_response_only`: score whole responses (loss.kind=reweight), not prefixes."""
        self.encoded, self.plan, self.open_pool, self.star_cfg = encoded, plan, open_pool, \
            star_cfg
        self.pool = None
        self.chunk_fp, self.feed, self.put_timeout_s, self.cache = chunk_fp, feed, \
            put_timeout_s, cache
        self.progress, self.on_metrics = progress, on_metrics
        self.items = star_items(rows, encoded, star_cfg, full_response_only)
        self.keys = [e.id for e in encoded]
        self.records: dict[str, StarRecord] = {}  # row id -> record
        self.train_rows: dict = {}  # row index -> weighted TrainRow (kept for later epochs)
        self.steps_put = 0
        self.cache_hits = 0
        self.error: Optional[BaseException] = None
        self._metrics_sent = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            with self.open_pool() as pool:
                self.pool = pool
                self._produce()
        except ProducerStopped:
            pass
        except BaseException as err:  # handed to the driver's thread, and to the workers
            self.error = err
            try:
                get(self.feed.fail.remote(f"STAR producer failed: {err}"), timeout_s=10,
                    what="failing the step feed")
            except RemoteError:
                pass  # the feed is gone; the workers see that as an error too
        finally:
            if self.cache is not None:
                self.cache.flush()

    def _produce(self) -> None:
        from ..guard.pool import ScoreRequest

        # A mixture may repeat a row (same id): it is scored once and fills every copy.
        copies: dict[str, list[int]] = {}
        for i in stream_order(self.plan):
            copies.setdefault(self.keys[i], []).append(i)
        todo = list(copies)
        if self.cache is not None:
            from .cache import split_cached

            fps = self.pool.fingerprints()
            served, todo = split_cached(self.cache, fps, self.chunk_fp,
                                        [(k, *self.items[k]) for k in copies])
            for key, (_, scores) in served.items():
                self._accept(copies[key], scores)
            self.cache_hits = len(served)
        self._put_ready()
        requests = (ScoreRequest(k, *self.items[k]) for k in todo)
        for key, scores in self.pool.stream(requests, self.progress, total=len(todo)):
            if self._stop.is_set():
                raise ProducerStopped
            self._accept(copies[key], scores)
            if self.cache is not None:
                from .cache import store_scored

                store_scored(self.cache, fps, self.chunk_fp, {key: (*self.items[key], scores)})
            if self.on_metrics is not None and len(self.pool.metrics) > self._metrics_sent:
                self.on_metrics(self.pool.metrics[self._metrics_sent:])
                self._metrics_sent = len(self.pool.metrics)
            self._put_ready()
        self._put_ready()
        if self.steps_put != len(self.plan):  # every planned row was requested: cannot happen
            raise RuntimeError(f"stream ended after {self.steps_put} of {len(self.plan)} steps")

    def _accept(self, rows: list[int], scores) -> None:
        key = self.keys[rows[0]]
        record = star_record(key, self.items[key], scores, self.star_cfg.combine)
        self.records[key] = record
        row = weighted_row(self.encoded[rows[0]], record, self.star_cfg.threshold)
        for i in rows:
            self.train_rows[i] = row

    def _put_ready(self) -> None:
        """Hand over every step, in order, whose rows are all weighted."""
        while self.steps_put < len(self.plan):
            slots = self.plan[self.steps_put]
            if any(i is not None and i not in self.train_rows for i in slots):
                return
            rows = [self.train_rows[i] if i is not None else None for i in slots]
            tokens = sum(sum(r.loss_mask[1:]) for r in rows if r is not None)
            self._put(self.steps_put, rows, tokens)
            self.steps_put += 1

    def _put(self, step: int, rows: list, tokens: int) -> None:
        ref = self.feed.put.remote(step, rows, tokens)
        deadline = time.monotonic() + self.put_timeout_s
        # A full feed is normal (training is the slower stage): wait in short polls so a
        # trainer that failed (stop) or a feed that died ends the wait at once.
        while not poll([ref], timeout_s=0.5):
            if self._stop.is_set():
                raise ProducerStopped
            if time.monotonic() > deadline:
                raise RemoteError(f"step feed: step {step + 1} not taken by the trainer within "
                                  f"{self.put_timeout_s:g}s")
        get(ref, timeout_s=10, what=f"step feed: put step {step + 1}")

    def ordered_records(self) -> list[StarRecord]:
        """Records in data order (what star.jsonl holds); every row id once."""
        return [self.records[k] for k in dict.fromkeys(self.keys) if k in self.records]


def stream_order(plan: Sequence[Sequence[Optional[int]]]) -> list[int]:
    """Row indices in order of first use: the order stream mode scores them in."""
    return list(dict.fromkeys(i for slots in plan for i in slots if i is not None))
