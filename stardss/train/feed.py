"""Where Ray Train workers get the rows of each optimizer step.

Three step sources with one interface, `step(step, rank) -> ((micro-batches, tokens),
wait_s)`, each shipped to the workers as it is (picklable):

    ShardSteps   what `stardss train` ships in table modes: the rows stay in their
                 memory-mapped shards (data/shards.py) and, STAR-weighted (precompute / cache
                 modes), their weights in the run's memory-mapped weights file (weights.py);
                 each worker reads its own slots' rows.
    TableSteps   a table of TrainRows in memory (tests, benchmarks, in-memory data): the table
                 goes to the object store once, each worker fetches it and slices its own
                 slots of the seeded plan.
    FeedSteps    stream mode: a `StepFeed` actor between the STAR producer on the driver and the
                 workers holds at most `capacity` scored steps not yet taken by every worker.
                 The producer's `put` waits while the feed is full (scoring never runs more
                 than `capacity` steps ahead), a worker's `take` waits until its step is scored.
                 When the run may restart from a checkpoint, taken steps are kept until a
                 checkpoint covers them (`done`), so a restarted worker group can take them again.

Either way a step's global batch and its token count are the same, so streamed training is the
same computation as training from a precomputed table, whatever the number of workers.
"""
from __future__ import annotations

import asyncio
import time
from typing import Optional, Sequence, Union

import ray

from ..raytools import RemoteError, get
from .batches import TrainRow, step_rows, step_tokens, train_row, worker_micro_batches

Step = tuple[list[list[Optional[TrainRow]]], int]
"""A worker's micro-batches of one step (None = an empty slot) and the step's trained tokens."""


def split_step(rows: Sequence[Optional[TrainRow]], rank: int, micro: int, accum: int) -> list:
    """This rank's micro-batches out of a step's global batch of rows."""
    return [[rows[i] for i in mb] for mb in worker_micro_batches(range(len(rows)), rank, micro,
                                                                 accum)]


class TableSteps:
    """The whole table and the plan; `rows` is the table or its object-store ref (fetched on
    the first step, within `fetch_timeout_s`)."""

    def __init__(self, rows, plan: list[list[Optional[int]]], micro: int, accum: int,
                 fetch_timeout_s: float, digest: str = ""):
        self.rows, self.plan, self.micro, self.accum = rows, plan, micro, accum
        self.fetch_timeout_s = fetch_timeout_s
        self.digest = digest
        """What the run trains (train/resume.run_digest): train.resume=auto compares it."""

    @property
    def n_steps(self) -> int:
        return len(self.plan)

    def step(self, step: int, rank: int) -> tuple[Step, float]:
        if isinstance(self.rows, ray.ObjectRef):
            self.rows = get(self.rows, timeout_s=self.fetch_timeout_s, what="the row table")
        batch = step_rows(self.rows, self.plan[step])
        return (split_step(batch, rank, self.micro, self.accum), step_tokens(batch)), 0.0

    def begin(self, step: int, rank: int) -> None:
        """This attempt starts at `step` (a resumed run: later than 0); the table has them all."""

    def done(self, step: int, rank: int) -> None:
        """Steps before `step` are checkpointed (the table keeps every row anyway)."""


class ShardSteps:
    """Table mode without the table: the run's rows stay in their memory-mapped shards
    (data/shards.py), their STAR weights (if any) in the run's weights file (weights.py,
    memory-mapped too), and each worker reads only the rows of its own slots of a step. What
    is shipped (and held by each worker) is the shard set's folders, `positions` (int64, the
    global shard row of each trained row: 8 bytes a row), the plan as an int64 array
    (n_steps x global batch, -1 = an empty slot), the weights file's folder, and, once opened,
    the set's per-row maps (16 bytes a row); token ids and weights are read from the mapped
    files step by step.

    `weights`: train.weights.TokenWeights with one entry per row of `positions` (row i: the
    weights of its response tokens, or unweighted: 1.0 everywhere); None = every row
    unweighted (sft and kinds without a guardrail, rs's kept rows)."""

    def __init__(self, shards, positions, plan: list[list[Optional[int]]], micro: int,
                 accum: int, digest: str = "", weights=None):
        import numpy as np

        self.shards, self.micro, self.accum = shards, micro, accum
        self.positions = np.ascontiguousarray(positions, dtype=np.int64)
        self.plan = np.asarray([[-1 if i is None else i for i in slots] for slots in plan],
                               dtype=np.int64).reshape(len(plan), -1)
        self.weights = weights
        self.digest = digest
        """What the run trains (train/resume.run_digest): train.resume=auto compares it."""

    @property
    def n_steps(self) -> int:
        return len(self.plan)

    def _row(self, slot: int) -> Optional[TrainRow]:
        if slot < 0:
            return None
        enc = self.shards.encoded(int(self.positions[slot]))
        w = self.weights.row(slot) if self.weights is not None else None
        if w is None:
            return train_row(enc)
        if len(w) != len(enc.input_ids) - enc.response_start:
            raise ValueError(f"{self.weights.folder}: row {slot} ({enc.id}) has {len(w)} "
                             f"weights for {len(enc.input_ids) - enc.response_start} response "
                             f"tokens: the weights file is not this run's")
        return train_row(enc, w.tolist())

    def step(self, step: int, rank: int) -> tuple[Step, float]:
        import numpy as np

        slots = self.plan[step]
        rows = self.positions[slots[slots >= 0]]
        # step_tokens without reading the rows: each row's loss targets, from the shard set's
        # per-row maps (its tokens from response_start on, or its turns' tokens; position 0
        # is never a target)
        tokens = int(self.shards.trained_tokens[rows].astype(np.int64).sum())
        mine = worker_micro_batches(range(len(slots)), rank, self.micro, self.accum)
        # No wait to report: the rows are read from files, not waited for.
        return ([[self._row(int(slots[i])) for i in mb] for mb in mine], tokens), 0.0

    def begin(self, step: int, rank: int) -> None:
        """This attempt starts at `step`; the shards hold every row."""

    def done(self, step: int, rank: int) -> None:
        """Steps before `step` are checkpointed (the shards keep every row anyway)."""


def shard_steps(data, train, seed: int, job_record: dict, positions=None,
                weights=None) -> ShardSteps:
    """The ShardSteps of a run's sharded data (data.load.ShardedData) with its seeded plan and
    digest (train: TrainConfig). `positions`: the rows trained (default every row of the data;
    rs drop: the kept ones); `weights`: their TokenWeights (ShardSteps')."""
    from ..data.shards import RowsView
    from .batches import plan_for
    from .resume import run_digest

    positions = data.positions if positions is None else positions
    plan = plan_for(train, seed, len(positions))
    rows_sha = RowsView(data.shards, positions, "encoded").digest
    if weights is not None:
        import hashlib

        rows_sha = hashlib.sha256(f"{rows_sha}|{weights.digest}".encode()).hexdigest()
    return ShardSteps(data.shards, positions, plan, train.micro_batch_size, train.grad_accum,
                      digest=run_digest(train, job_record, plan, rows_sha), weights=weights)


class FeedError(RuntimeError):
    """The producer failed (e.g. the guardrail pool gave up); the message says why."""


@ray.remote(num_cpus=0)
class StepFeed:
    """A bounded buffer of scored steps (async actor: waits cost no thread).

    `retain`: keep steps every rank has taken until `commit` says a checkpoint covers them
    (a run that can restart from a checkpoint takes them again); otherwise they go at once.
    `start(step)`: the workers begin at `step` (a run resumed from a checkpoint): earlier steps
    are dropped, and put for them returns at once, so a producer that goes through the plan
    from step 0 (its rows served by the STAR cache) never waits on steps nobody takes.
    """

    def __init__(self, world: int, capacity: int, micro: int, accum: int,
                 retain: bool = False):
        self.world, self.capacity, self.micro, self.accum = world, capacity, micro, accum
        self.retain = retain
        self.steps: dict[int, tuple[list, int, set]] = {}  # step -> (rows, tokens, ranks done)
        self.error: Optional[str] = None
        self.changed = asyncio.Condition()
        self.put_wait_s = 0.0
        self.most_buffered = 0
        self.floor = 0  # the first step the workers take (start)
        self.dropped_below = 0  # steps before this were dropped (start, commit)

    def _unconsumed(self) -> int:
        return sum(len(taken) < self.world for _, _, taken in self.steps.values())

    async def put(self, step: int, rows: list[Optional[TrainRow]], tokens: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self.changed:
            await self.changed.wait_for(lambda: step < self.floor or self.error
                                        or self._unconsumed() < self.capacity)
            if step < self.floor:  # before where the workers (re)started: nobody takes it
                return
            self.steps[step] = (rows, tokens, set())
            self.most_buffered = max(self.most_buffered, self._unconsumed())
            self.changed.notify_all()
        self.put_wait_s += loop.time() - started

    async def take(self, step: int, rank: int) -> Step:
        async with self.changed:
            if step < self.dropped_below and step not in self.steps:
                raise FeedError(
                    f"step feed: step {step + 1} was dropped (the steps before "
                    f"{self.dropped_below + 1} were behind a checkpoint), but the workers "
                    f"restarted from an earlier one")
            await self.changed.wait_for(lambda: step in self.steps or self.error)
            if step not in self.steps:
                raise FeedError(self.error)
            rows, tokens, taken = self.steps[step]
            taken.add(rank)
            if len(taken) == self.world:  # every rank has its share: free the room
                if not self.retain:
                    del self.steps[step]
                self.changed.notify_all()
        return split_step(rows, rank, self.micro, self.accum), tokens

    async def start(self, step: int) -> None:
        """The workers (re)start at `step`: steps before it are done (in a checkpoint)."""
        async with self.changed:
            self.floor = max(self.floor, step)
            self._drop_before(step)

    async def commit(self, step: int) -> None:
        """Steps before `step` are behind a checkpoint a restart will find: none takes them
        again."""
        async with self.changed:
            self._drop_before(step)

    def _drop_before(self, step: int) -> None:
        """(holding the condition's lock)"""
        for s in [s for s in self.steps if s < step]:
            del self.steps[s]
        self.dropped_below = max(self.dropped_below, step)
        self.changed.notify_all()

    async def fail(self, message: str) -> None:
        async with self.changed:
            self.error = message
            self.changed.notify_all()

    def stats(self) -> dict:
        return {"buffered": self._unconsumed(), "retained": len(self.steps),
                "most_buffered": self.most_buffered, "producer_wait_s": self.put_wait_s,
                "capacity": self.capacity}


def _feed_error(err: RemoteError) -> FeedError:
    """A worker's failed call to the feed as one line; a dead feed actor says so: its steps
    are gone with it, so a restarted worker group cannot go on either (the run fails)."""
    if isinstance(err.__cause__, ray.exceptions.RayActorError):
        return FeedError(f"streamed STAR rows: the step feed actor died, the run cannot go on "
                         f"without it ({err})")
    return FeedError(f"streamed STAR rows: {err}")


class FeedSteps:
    """A worker's view of the feed; `wait_s` bounds one wait for a step (the producer fails
    the feed well before that when the guardrail pool stalls)."""

    def __init__(self, feed, n_steps: int, wait_s: float, digest: str = ""):
        self.feed, self.n_steps, self.wait_s = feed, n_steps, wait_s
        self.digest = digest
        """What the run trains (train/resume.run_digest): train.resume=auto compares it."""

    def step(self, step: int, rank: int) -> tuple[Step, float]:
        started = time.perf_counter()
        try:
            got = get(self.feed.take.remote(step, rank), timeout_s=self.wait_s,
                      what=f"rank {rank} waiting for scored step {step + 1}")
        except RemoteError as err:
            raise _feed_error(err) from None
        return got, time.perf_counter() - started

    def begin(self, step: int, rank: int) -> None:
        """This attempt starts at `step`: the feed may drop (and stop waiting on) the earlier
        ones."""
        if rank == 0 and step:
            try:
                get(self.feed.start.remote(step), timeout_s=self.wait_s,
                    what=f"step feed: start at step {step + 1}")
            except RemoteError as err:
                raise _feed_error(err) from None

    def done(self, step: int, rank: int) -> None:
        """A checkpoint a restart is sure to find (registered by Ray Train: the one before
        the newest) covers the steps before `step`: the feed may drop them."""
        if rank == 0:
            try:
                get(self.feed.commit.remote(step), timeout_s=self.wait_s,
                    what=f"step feed: commit step {step}")
            except RemoteError as err:
                raise _feed_error(err) from None


StepSource = Union[TableSteps, ShardSteps, FeedSteps]
"""Where a run's workers take their steps from: a type, shipped to them in the spec."""
