"""Which rows each worker trains on at each step, and how a micro-batch becomes tensors.

The driver makes one seeded plan and every worker reads the same global batch at each step,
from the whole row table or from the stream (feed.py), however many workers share it: worker r
takes slots [r*micro*accum, (r+1)*micro*accum) of the step. The last step of an epoch may be
short; its empty slots become all-masked padding rows so every rank still runs the same number
of forward/backward passes (collectives need it) and no row is dropped (train.drop_last=true
instead plans full steps only, as the authors' code does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # the StepFeed actor imports this module: only what it runs, no config
    from ..config.schema import TrainConfig
    from ..data.format import EncodedRow


@dataclass
class TrainRow:
    """A tokenised row as the trainer sees it; the trainer never calls a guardrail."""

    id: str
    input_ids: list[int]
    loss_mask: list[int]
    """1 where the token is a trained response token."""
    weights: list[float]
    """STAR weight of each token (1.0 where unweighted)."""


def train_row(enc: EncodedRow, weights: Optional[Sequence[float]] = None) -> TrainRow:
    """The trainer's view of a tokenised row: every response token trained, with `weights`
    (one per response token, from STAR) or 1.0 everywhere."""
    n = len(enc.input_ids)
    mask = [0] * enc.response_start + [1] * (n - enc.response_start)
    if weights is None:
        return TrainRow(enc.id, enc.input_ids, mask, [1.0] * n)
    return TrainRow(enc.id, enc.input_ids, mask, [0.0] * enc.response_start + list(weights))


def plan_for(train: TrainConfig, seed: int, n_rows: int) -> list[list[Optional[int]]]:
    """The seeded global-batch plan of a run: row index per slot per optimizer step."""
    return plan_steps(n_rows, train.micro_batch_size * train.grad_accum * train.workers,
                      train.epochs, seed, train.max_steps, train.drop_last)


def plan_steps(n_rows: int, global_batch: int, epochs: int, seed: int,
               max_steps: Optional[int] = None,
               drop_last: bool = False) -> list[list[Optional[int]]]:
    """Row index (or None for an empty slot) in each of the `global_batch` slots of every step;
    `drop_last`: only full steps (the epoch's leftover rows wait for the next permutation)."""
    if n_rows <= 0:
        raise ValueError("no training rows")
    if drop_last and n_rows < global_batch:
        from ..config.fields import ConfigError  # the user's to fix: exit 2

        raise ConfigError(f"train.drop_last: {n_rows} rows fill no global batch of "
                         f"{global_batch} (train.micro_batch_size x grad_accum x workers): "
                         f"no step to train; use drop_last=false or a smaller batch")
    steps: list[list[Optional[int]]] = []
    per_epoch = n_rows // global_batch if drop_last else math.ceil(n_rows / global_batch)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n_rows).tolist()
        for s in range(per_epoch):
            chunk = order[s * global_batch:(s + 1) * global_batch]
            steps.append(chunk + [None] * (global_batch - len(chunk)))
    return steps[:max_steps] if max_steps else steps


def worker_micro_batches(slots: Sequence[Optional[int]], rank: int, micro: int,
                         accum: int) -> list[list[Optional[int]]]:
    mine = slots[rank * micro * accum:(rank + 1) * micro * accum]
    return [list(mine[i * micro:(i + 1) * micro]) for i in range(accum)]


def stream_order(plan: Sequence[Sequence[Optional[int]]]) -> list[int]:
    """Row indices in order of first use: the order rows are scored in (every mode)."""
    return list(dict.fromkeys(i for slots in plan for i in slots if i is not None))


def step_rows(rows: Sequence[TrainRow], slots: Sequence[Optional[int]]) -> list[Optional[TrainRow]]:
    """A step's global batch: the row of each slot (None = an empty slot)."""
    return [rows[i] if i is not None else None for i in slots]


def step_tokens(batch: Sequence[Optional[TrainRow]]) -> int:
    """Trained tokens in a step's global batch: the loss's denominator. Position 0 is never
    a target."""
    return sum(sum(r.loss_mask[1:]) for r in batch if r is not None)


def collate(rows: Sequence[Optional[TrainRow]], pad_id: int) -> dict:
    """Right-padded tensors of a micro-batch; None slots (and padding) carry loss_mask 0.

    An empty slot still runs through the model (every rank must run the same passes), as a copy
    of a real row of the micro-batch or, when there is none, one attended pad token.
    """
    import torch  # here, not at the top: the StepFeed actor unpickles TrainRows without torch

    real = [r for r in rows if r is not None]
    donor = real[0] if real else TrainRow("", [pad_id], [0], [0.0])
    width = max(len(r.input_ids) for r in real or [donor])
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    for b, row in enumerate(rows):
        src = row if row is not None else donor
        L = len(src.input_ids)
        ids[b, :L] = torch.tensor(src.input_ids)
        attn[b, :L] = 1
        if row is not None:
            mask[b, :L] = torch.tensor(row.loss_mask)
            weights[b, :L] = torch.tensor(row.weights, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "weights": weights}
