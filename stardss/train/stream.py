"""Stream mode: score rows in the order training will use them and hand each optimizer step to
the trainer's feed as soon as every row in it is weighted.

Runs in a thread of the driver beside `TorchTrainer.fit()`:

    plan order -> Scorer.records (STAR cache hits | GuardPool.stream) -> StarRecord
               -> its token weights (<run>/weights.f32, train/weights.py)
               -> the step's weighted TrainRows -> StepFeed.put(step)
                  (waits while `scoring.prefetch_steps` steps are unconsumed)

Rows are requested in order of first use, so step 1 is ready after its own rows are scored,
not after the whole dataset. Each row is scored once: later epochs reuse its weights, read
back from the weights file. The producer keeps no row and no record: a step's TrainRows are
built (row from the shards + weights from the file) when the step is put, and each record
goes to star.jsonl (star.score.StarWriter) as it arrives.
"""
from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..data.format import EncodedRow
from ..data.shards import row_ids
from ..guard.base import ScoreRequest
from ..raytools import RemoteError, get, poll
from ..star.score import Scorer, StarWriter, record_weights
from .batches import step_tokens, stream_order, train_row
from .weights import WeightsWriter


class ProducerStopped(Exception):
    """The trainer ended first (it failed); the producer stops quietly."""


class StepProducer:
    """Fills a StepFeed with the scored steps of `plan`; `run()` is the thread's body."""

    def __init__(self, encoded: Sequence[EncodedRow],
                 requests: Callable[[Sequence[str], Iterable[int]], Sequence[ScoreRequest]],
                 plan: list[list[Optional[int]]], open_pool: Callable, scorer: Scorer,
                 threshold: Optional[float], feed, weights_dir, put_timeout_s: float,
                 progress: Optional[Callable[[int, int], None]] = None,
                 on_metrics: Optional[Callable[[list[dict]], None]] = None):
        """`encoded`: the rows by index (a list, or data.shards.RowsView reading each row from
        the shards when it is weighted); `requests(keys, used)`: the ScoreRequests of the
        distinct rows of `used` (row indices) in that order (star.score.ScoreRequests
        .first_use: built as the pool reads them); `open_pool()`
        makes the GuardPool (in the thread, so actors load while Ray Train starts);
        `threshold`: star.threshold (None = soft weights); `weights_dir`: the run's folder,
        where weights.f32 and star.jsonl are written; `on_metrics` gets the pool's
        per-batch metrics as they come (for the tracker)."""
        self.encoded, self.requests, self.plan = encoded, requests, plan
        self.threshold = threshold
        self.open_pool, self.scorer, self.feed = open_pool, scorer, feed
        self.put_timeout_s, self.progress, self.on_metrics = put_timeout_s, progress, on_metrics
        self.pool = None
        self.weights = WeightsWriter(weights_dir, len(encoded))  # row index -> its weights
        self.star = StarWriter(Path(weights_dir) / "star.jsonl", row_ids(encoded))
        self.scored = 0  # distinct records received
        self.prefixes = 0  # their prefixes
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
        keys = row_ids(self.encoded)
        # A mixture may repeat a row (same id): it is scored once and fills every copy.
        copies: dict[str, list[int]] = {}
        for i in stream_order(self.plan):
            copies.setdefault(keys[i], []).append(i)
        requests = self.requests(keys, stream_order(self.plan))
        with closing(self.scorer.row_records(self.pool, requests, self.progress)) as records:
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

    @property
    def rows_weighted(self) -> int:
        """Rows of the data (mixture indices) weighted so far: the rows streamed training
        trains on."""
        return int((self.weights.index[:, 0] >= 0).sum())

    def _accept(self, rows: list[int], record) -> None:
        """A row's record (StarRecord, or ConversationRecord: data.train_turns=all) weights
        every copy of it."""
        self.star.add(record)
        self.scored += 1
        self.prefixes += record.n_prefixes
        self.weights.put(rows, record_weights(record, self.encoded[rows[0]], self.threshold))

    def _put_ready(self) -> None:
        """Hand over every step, in order, whose rows are all weighted."""
        while self.steps_put < len(self.plan):
            slots = self.plan[self.steps_put]
            if any(i is not None and not self.weights.has(i) for i in slots):
                return
            # float32 weights, as a ShardSteps reads them from the file (the loss's dtype)
            batch = [None if i is None else
                     train_row(self.encoded[i], self.weights.get(i).tolist()) for i in slots]
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

    def finish(self) -> None:
        """The run trained: star.jsonl (data order) and the weights file go in place."""
        self.star.close()
        self.weights.close()

    def abort(self) -> None:
        """The run failed: neither file is written."""
        self.star.__exit__(RuntimeError, None, None)
        self.weights.abort()
