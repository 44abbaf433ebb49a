"""Which rows each worker trains on at each step, and how a micro-batch becomes tensors.

The driver makes one seeded plan and every worker reads the same global batch at each step,
from the whole row table or from the stream (feed.py), however many workers share it: worker r
takes slots [r*micro*accum, (r+1)*micro*accum) of the step. The last step of an epoch may be
short; its empty slots become all-masked padding rows so every rank still runs the same number
of forward/backward passes (collectives need it) and no row is dropped (train.drop_last=true
instead plans full steps only, as the authors' code does).

A micro-batch becomes tensors in one of two layouts (`collate`): its rows right-padded to the
longest, or (train.packing) packed into as few sequences of up to data.max_length tokens as
fit, each row's position ids restarting at 0 so attention never crosses rows. Every rank still
makes one forward/backward pass per micro-batch (collectives under ZeRO need the same count).
The model is called as `module(**model_inputs(batch))` in either layout.
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
    (one per response token, from STAR) or 1.0 everywhere. A row that trains every assistant
    turn (enc.token_turn, data.train_turns=all) trains the tokens of its turns only: the user
    turns between them have mask 0 (and STAR weight 0)."""
    n = len(enc.input_ids)
    if enc.token_turn is None:
        mask = [0] * enc.response_start + [1] * (n - enc.response_start)
    else:
        mask = [0] * enc.response_start + [int(t >= 0) for t in enc.token_turn]
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


def collate(rows: Sequence[Optional[TrainRow]], pad_id: int,
            pack_length: Optional[int] = None) -> dict:
    """A micro-batch as tensors: right-padded rows (`pad_id`), or with `pack_length` packed
    rows (`pack`). Either way:

        input_ids, loss_mask (long), weights (float32)   (N, T): N rows or N packed sequences
        attention_mask (N, T)    padded layout: 1 on a row's tokens
        position_ids (N, T)      packed layout: restarting at 0 on each row (and its padding)
        row_bin, row_offset      (len(rows),): where rows[i]'s token 0 is, [row_bin[i],
                                 row_offset[i]]; -1 for an empty slot. Token j of the row is
                                 at column row_offset + j, its log-prob target at column
                                 row_offset + j - 1 of the (N, T-1) token log-probs.

    Empty slots and padding carry loss_mask 0. An empty slot of the padded layout still runs
    through the model (every rank must run the same passes), as a copy of a real row of the
    micro-batch or, when there is none, one attended pad token.
    """
    import torch  # here, not at the top: the StepFeed actor unpickles TrainRows without torch

    if pack_length is not None:
        return pack(rows, pad_id, pack_length)
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
    where = [-1 if r is None else b for b, r in enumerate(rows)]
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "weights": weights,
            "row_bin": torch.tensor(where, dtype=torch.long),
            "row_offset": torch.tensor([-1 if w < 0 else 0 for w in where], dtype=torch.long)}


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices into `lengths` grouped into bins of at most `capacity` tokens (a longer row
    gets a bin of its own): as few bins as first-fit decreasing finds, then spread over them
    longest first, each to the emptiest bin, when that makes the fullest bin shorter (every
    bin is padded to the fullest: the packed tensor's width)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # ties in slot order
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        b = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
        if b is None:
            bins.append([])
            room.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= lengths[i]
    spread: list[list[int]] = [[] for _ in bins]
    fill = [0] * len(bins)
    for i in order:
        b = fill.index(min(fill))
        spread[b].append(i)
        fill[b] += lengths[i]
    widest = max((sum(lengths[i] for i in b) for b in bins), default=0)
    return spread if max(fill, default=0) < min(widest, capacity + 1) else bins


def pack(rows: Sequence[Optional[TrainRow]], pad_id: int, capacity: int) -> dict:
    """The micro-batch's rows packed into sequences of at most `capacity` tokens (collate's
    layout). Attention never crosses rows: each row's position ids restart at 0, which the
    model's mask builder (transformers 5, `find_packed_sequence_indices`, given no 2D mask)
    turns into a block-diagonal causal mask; a sequence's tail padding restarts too, and comes
    after every row in it. A row's first token is never a target (as unpadded: nothing before
    it in its row predicts it), so its loss_mask is 0. Empty slots take no room; a micro-batch
    of empty slots is one pad token (the pass every rank makes)."""
    import torch

    real = [b for b, r in enumerate(rows) if r is not None]
    bins = [[real[i] for i in group]
            for group in pack_bins([len(rows[b].input_ids) for b in real], capacity)]
    width = max([sum(len(rows[b].input_ids) for b in group) for group in bins] or [1])
    n = max(len(bins), 1)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.arange(width).repeat(n, 1)  # the padding of an empty bin: one sequence
    mask = torch.zeros((n, width), dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    row_bin = torch.full((len(rows),), -1, dtype=torch.long)
    row_offset = torch.full((len(rows),), -1, dtype=torch.long)
    for k, group in enumerate(bins):
        at = 0
        for b in group:
            row = rows[b]
            L = len(row.input_ids)
            ids[k, at:at + L] = torch.tensor(row.input_ids)
            pos[k, at:at + L] = torch.arange(L)
            mask[k, at:at + L] = torch.tensor(row.loss_mask)
            mask[k, at] = 0
            weights[k, at:at + L] = torch.tensor(row.weights, dtype=torch.float32)
            row_bin[b], row_offset[b] = k, at
            at += L
        pos[k, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": pos, "loss_mask": mask, "weights": weights,
            "row_bin": row_bin, "row_offset": row_offset}


def model_inputs(batch: dict) -> dict:
    """What the model is called with for a collated batch, `module(**model_inputs(batch))`:
    the padding mask of the padded layout, or the packed layout's position ids and no 2D mask
    (transformers builds the block-diagonal mask from them; only without a KV cache, hence
    use_cache=False, which training wants anyway)."""
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def check_packing(module, vocab_size: int, pad_id: int, name: str) -> None:
    """train.packing trusts the model to mask packed rows from their position ids; a model
    (or attention) that does not would let rows attend to each other silently. One probe at
    start: a row's logits must not change with the row packed before it. ConfigError, one
    line naming the model, when they do. (No grad, eval mode: dropout would differ anyway.)"""
    import torch

    g = torch.Generator().manual_seed(0)
    mine = torch.randint(vocab_size, (4,), generator=g).tolist()
    seen = []
    for _ in range(2):
        other = torch.randint(vocab_size, (5,), generator=g).tolist()
        rows = [TrainRow("", other, [0] * 5, [0.0] * 5), TrainRow("", mine, [0] * 4, [0.0] * 4)]
        batch = pack(rows, pad_id, 9)
        at, device = int(batch["row_offset"][1]), next(module.parameters()).device
        training = module.training
        module.eval()
        with torch.no_grad():
            logits = module(**model_inputs({k: v.to(device) for k, v in batch.items()})).logits
        module.train(training)
        seen.append(logits[0, at:at + 4].float().cpu())
    if not torch.allclose(seen[0], seen[1], rtol=1e-2, atol=1e-2 * float(seen[0].abs().max())):
        from ..config.fields import ConfigError

        raise ConfigError(f"train.packing: {name} lets packed rows attend to each other (its "
                          f"attention does not mask them by position ids, as transformers 5's "
                          f"Llama/Mistral/Qwen/Gemma do); set train.packing=false")


def padding_fraction(rows: Sequence[Optional[TrainRow]], batch: dict) -> float:
    """Share of `batch`'s token cells (collated from `rows`) that hold none of the rows'
    tokens: padding, and the copies of a donor row in empty slots."""
    tokens = sum(len(r.input_ids) for r in rows if r is not None)
    return 1.0 - tokens / batch["input_ids"].numel()


def by_length(micro_batches: Sequence[Sequence[Optional[TrainRow]]]) \
        -> list[list[Optional[TrainRow]]]:
    """train.group_by_length: a rank's rows of a step, longest first (empty slots last), cut
    again into micro-batches of the same sizes, so rows of similar length share a micro-batch
    and pad less. The step's rows and their split over ranks stay as planned: its loss (a sum
    over the global batch) is unchanged."""
    flat = [r for mb in micro_batches for r in mb]
    real = sorted((r for r in flat if r is not None), key=lambda r: -len(r.input_ids))
    flat = real + [None] * (len(flat) - len(real))
    out, at = [], 0
    for mb in micro_batches:
        out.append(flat[at:at + len(mb)])
        at += len(mb)
    return out
