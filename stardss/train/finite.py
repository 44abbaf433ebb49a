"""Non-finite numbers at run time: a NaN/inf loss or gradient norm must not train on silently,
and a model with a non-finite parameter must not be written.

How a bad step is skipped (the same under ZeRO 0-3, fp32 or bf16): after the last micro-batch's
backward every rank checks its loss (and, without ZeRO, the whole all-reduced gradients; under
ZeRO the gradients are partitioned inside DeepSpeed), the flags are all-reduced so every rank
decides the same, and on a bad step `engine.step()` still runs (DeepSpeed's micro-step and
boundary counters stay right) with the torch optimizer's own `step` switched off, so no
parameter and no Adam state moves. Under ZeRO DeepSpeed also computes the global gradient norm
in its step and itself skips the update when that norm is non-finite (fp32); such a step is
counted too. Either way the learning-rate schedule advances as on any other step: the LR of
plan step s never depends on how many steps before it were skipped (nor does a resume).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Optional, Sequence

ROW_IDS_SHOWN = 8
"""Row ids a non-finite message lists before it says how many more there were."""


def describe(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def nonfinite_message(what: str, value: float, step: int, rank: int, row_ids: Sequence[str],
                      allowed: int) -> str:
    """The one line a run fails with: `what` (loss | gradient norm) and its value at plan step
    `step` (1-based) on `rank`, the ids of that rank's rows in the step."""
    shown = ", ".join(row_ids[:ROW_IDS_SHOWN]) or "none: padding only"
    more = f", ... {len(row_ids) - ROW_IDS_SHOWN} more" if len(row_ids) > ROW_IDS_SHOWN else ""
    return (f"non-finite {what} ({describe(value)}) at step {step} on rank {rank} "
            f"(rows {shown}{more}): train.max_nonfinite_steps={allowed}")


def step_row_ids(micro_batches) -> list[str]:
    """Ids of the real rows (not the empty slots) in a rank's micro-batches of one step."""
    return [r.id for rows in micro_batches for r in rows if r is not None]


def first_nonfinite(named: Iterable) -> Optional[tuple[str, float]]:
    """(name, a non-finite value) of the first tensor in (name, tensor) pairs holding a NaN or
    inf, else None."""
    import torch

    for name, t in named:
        if t is None or not t.is_floating_point() or t.numel() == 0:
            continue
        bad = ~torch.isfinite(t.detach())
        if bad.any():
            return name, float(t.detach()[bad].flatten()[0])
    return None


@contextmanager
def no_update(optimizer):
    """`optimizer.step()` does nothing inside: the caller runs DeepSpeed's step for its
    bookkeeping without moving parameters or optimizer state."""
    # torch's LR scheduler keeps a wrapper of `step` on the instance: it is put back after.
    own = optimizer.__dict__.get("step")
    optimizer.step = lambda *args, **kwargs: None  # an instance attribute shadows the method
    try:
        yield
    finally:
        if own is None:
            del optimizer.step
        else:
            optimizer.step = own
