"""What each loss kind is and what it needs from the stages before it: the one table that
validation, the STAR stage and the commands read (the math of every kind is in loss.py).

A leaf module: it imports nothing of stardss and no torch, so the job's validation (and the
StepFeed actor, and planning on the driver) can read it for free.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossKind:
    name: str
    scoring: str
    """What the guardrails score: "none", "prefix" (every cumulative prefix: STAR) or
    "full_response" (one judgement of the whole response: static shaping)."""
    reference: bool
    """Has a KL term to the frozen reference (the initial model)."""
    streams: bool
    """Rows can be trained as soon as they are scored (stream mode). rs cannot: it plans
    batches of the rows it keeps, so it must see every verdict first."""
    weighted: bool
    """Trains with per-token weights from the scores (the rows carry them)."""
    drops_unsafe: bool = False
    """Rows judged unsafe as whole responses are left out before planning (rs)."""

    @property
    def uses_guardrails(self) -> bool:
        return self.scoring != "none"


LOSS_KINDS: dict[str, LossKind] = {k.name: k for k in (
    LossKind("sft", scoring="none", reference=False, streams=False, weighted=False),
    LossKind("rs", scoring="full_response", reference=False, streams=False, weighted=False,
             drops_unsafe=True),
    LossKind("reweight", scoring="full_response", reference=False, streams=True, weighted=True),
    LossKind("dss", scoring="prefix", reference=True, streams=True, weighted=True),
    LossKind("kl_only", scoring="none", reference=True, streams=False, weighted=False),
)}

KL_ESTIMATORS = ("k1", "k2", "k3", "full")
TOKEN_ESTIMATORS = ("k1", "k2", "k3")
"""Estimators that need only the reference's log-prob of each dataset token (cacheable, and
all a reference actor group returns); `full` needs its whole distribution."""


def loss_kind(name: str) -> LossKind:
    try:
        return LOSS_KINDS[name]
    except KeyError:
        raise ValueError(f"loss.kind: unknown {name!r} (one of {', '.join(LOSS_KINDS)})") \
            from None
