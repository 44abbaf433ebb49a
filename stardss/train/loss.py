"""The training loss, all kinds in one function, read top to bottom.

For every trained (response) token t with STAR weight w_t:

    sft, rs:  CE_t                                  (rs drops unsafe examples before training)
    dss:      w_t * CE_t + (1 - w_t) * coef * KL_t  (KL to the frozen initial model)

The function returns *sums* over the tokens it sees; the caller divides by the number of
response tokens in the whole global batch, which is what makes the result independent of how
the batch is split across workers and accumulation steps.

KL estimators, with r_t = log p_policy(y_t) - log p_ref(y_t) at the dataset token y_t:
    k1 = r,  k2 = r^2 / 2 (the paper's),  k3 = exp(-r) - 1 + r,
    full = sum_v p_policy(v) (log p_policy(v) - log p_ref(v))  (whole vocabulary).
k2, k3 and full have zero gradient where policy == reference; k1 does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class LossSums:
    total: torch.Tensor
    """Sum of per-token losses: differentiate this."""
    ce: torch.Tensor
    """Sum of CE over trained tokens (unweighted), for logging."""
    kl: torch.Tensor
    """Sum of KL over trained tokens (unweighted, 0 without a reference), for logging."""
    weight: torch.Tensor
    """Sum of STAR weights over trained tokens."""
    low_weight: torch.Tensor
    """Trained tokens whose weight is below 0.5."""
    tokens: torch.Tensor
    """Number of trained tokens."""


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, targets: torch.Tensor,
                 estimator: str) -> torch.Tensor:
    """KL term per position. logp/ref_logp: (B, T, V) log-probabilities; targets: (B, T)."""
    if estimator == "full":
        return (logp.exp() * (logp - ref_logp)).sum(-1)
    r = (logp.gather(-1, targets[..., None]) - ref_logp.gather(-1, targets[..., None]))[..., 0]
    if estimator == "k1":
        return r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.exp(-r) - 1.0 + r
    raise ValueError(f"loss.kl.estimator: unknown {estimator!r}")


def stardss_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                 weights: torch.Tensor, kind: str, ref_logits: Optional[torch.Tensor] = None,
                 kl_coef: float = 0.5, kl_estimator: str = "k2") -> LossSums:
    """Sums of the per-token loss over one micro-batch.

    logits, ref_logits: (B, T, V) for input_ids (B, T). loss_mask[b, t] = 1 when token t is a
    trained response token; weights[b, t] is its STAR weight (ignored by sft and rs).
    """
    # Position t predicts token t+1.
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logp.dtype)
    w = weights[:, 1:].to(logp.dtype)

    ce = -logp.gather(-1, targets[..., None])[..., 0]
    if kind in ("sft", "rs"):
        per_token = ce
        kl = torch.zeros_like(ce)
    elif kind == "dss":
        if ref_logits is None:
            raise ValueError("loss.kind=dss needs the reference model's logits")
        ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
        kl = kl_per_token(logp, ref_logp, targets, kl_estimator)
        per_token = w * ce + (1.0 - w) * kl_coef * kl
    else:
        raise ValueError(f"loss.kind: unknown {kind!r}")

    return LossSums(
        total=(per_token * mask).sum(),
        ce=(ce * mask).sum().detach(),
        kl=(kl * mask).sum().detach(),
        weight=(w * mask).sum(),
        low_weight=((w < 0.5).to(mask.dtype) * mask).sum(),
        tokens=mask.sum(),
    )
