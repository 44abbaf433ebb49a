"""Stream mode: score rows in the order training will use them and hand each optimizer step to
the trainer's feed as soon as every row in it is weighted.

Runs in a thread of the driver beside `TorchTrainer.fit()`:

    plan order -> Scorer.records (STAR cache hits | GuardPool.stream) -> StarRecord
               -> weighted TrainRow -> StepFeed.put(step)
                  (waits while `scoring.prefetch_steps` steps are unconsumed)

Rows are requested in order of first use, so step 1 is ready after its own rows are scored,
not after the whole dataset. Each row is scored once: later epochs reuse its weights.
"""
from __future__ import annotations

import threading
import time
from contextlib import closing
from typing import Callable, Optional, Sequence

from ..data.format import EncodedRow
from ..guard.base import ScoreRequest
from ..raytools import RemoteError, get, poll
from ..star.score import Scorer, StarRecord, record_weights
from .batches import TrainRow, step_rows, step_tokens, stream_order, train_row


class ProducerStopped(Exception):
    """The trainer ended first (it failed); the producer stops quietly."""


class StepProducer:
    """Fills a StepFeed with the scored steps of `plan`; `run()` is the thread's body."""

    def __init__(self, encoded: Sequence[EncodedRow], requests: dict[str, ScoreRequest],
                 plan: list[list[Optional[int]]], open_pool: Callable, scorer: Scorer,
                 threshold: Optional[float], feed, put_timeout_s: float,
                 progress: Optional[Callable[[int, int], None]] = None,
                 on_metrics: Optional[Callable[[list[dict]], None]] = None):
        """`requests`: row id -> its ScoreRequest (star.score.score_requests); `open_pool()`
        makes the GuardPool (in the thread, so actors load while Ray Train starts);
        `threshold`: star.threshold (None = soft weights); `on_metrics` gets the pool's
        per-batch metrics as they come (for the tracker)."""
        self.encoded, self.requests, self.plan = encoded, requests, plan
        self.threshold = threshold
        self.open_pool, self.scorer, self.feed = open_pool, scorer, feed
        self.put_timeout_s, self.progress, self.on_metrics = put_timeout_s, progress, on_metrics
        self.pool = None
        self.records: dict[str, StarRecord] = {}  # row id -> record
        self.train_rows: dict[int, TrainRow] = {}  # row index -> weighted row (later epochs)
        self.steps_put = 0
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

    def _produce(self) -> None:
        keys = [e.id for e in self.encoded]
        # A mixture may repeat a row (same id): it is scored once and fills every copy.
        copies: dict[str, list[int]] = {}
        for i in stream_order(self.plan):
            copies.setdefault(keys[i], []).append(i)
        requests = [self.requests[k] for k in copies]
        with closing(self.scorer.records(self.pool, requests, self.progress)) as records:
            for record in records:
                if self._stop.is_set():
                    raise ProducerStopped
                self._accept(copies[record.id], record)
                metrics = self.pool.metrics
                if self.on_metrics is not None and len(metrics) > self._metrics_sent:
                    self.on_metrics(metrics[self._metrics_sent:])
                    self._metrics_sent = len(metrics)
                self._put_ready()
        self._put_ready()
        if self.steps_put != len(self.plan):  # every planned row was requested: cannot happen
            raise RuntimeError(f"stream ended after {self.steps_put} of {len(self.plan)} steps")

    @property
    def cache_hits(self) -> int:
        return self.scorer.cache_hits

    def _accept(self, rows: list[int], record: StarRecord) -> None:
        self.records[record.id] = record
        enc = self.encoded[rows[0]]
        row = train_row(enc, record_weights(record, enc, self.threshold))
        for i in rows:
            self.train_rows[i] = row

    def _put_ready(self) -> None:
        """Hand over every step, in order, whose rows are all weighted."""
        while self.steps_put < len(self.plan):
            slots = self.plan[self.steps_put]
            if any(i is not None and i not in self.train_rows for i in slots):
                return
            batch = step_rows(self.train_rows, slots)
            self._flush_cache()
            self._put(self.steps_put, batch, step_tokens(batch))
            self.steps_put += 1

    def _flush_cache(self) -> None:
        """Every row of a step handed to training is in the STAR cache on disk first: a run
        whose driver dies and resumes (train.resume=auto) never rescores a row it trained."""
        cache = self.scorer.cache
        if cache is not None and cache.pending:
            cache.flush()

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
        # A dead feed fails the put at once; its message names the feed (the step went
        # nowhere, and the workers lose their steps with it).
        get(ref, timeout_s=10,
            what=f"step feed actor (STAR producer -> Ray Train workers): put step {step + 1}")

    def ordered_records(self) -> list[StarRecord]:
        """Records in data order (what star.jsonl holds); every row id once."""
        keys = dict.fromkeys(e.id for e in self.encoded)
        return [self.records[k] for k in keys if k in self.records]
