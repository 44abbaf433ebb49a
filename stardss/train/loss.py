"""The training loss, every kind in one function, read top to bottom (what each kind needs
from the stages before it, a guardrail, a reference, is the table in kinds.py).

For every trained (response) token t with weight w_t:

    sft:       CE_t
    rs:        w * CE_t                              (w = 1 for an example the guardrail judges
                                                      safe; unsafe ones are dropped before
                                                      training, or kept with w = 0)
    reweight:  w * CE_t                              (w = the example's full-response P(safe))
    dss:       w_t * CE_t + (1 - w_t) * coef * KL_t  (w_t = STAR weight; KL to the frozen
                                                      initial model, the reference)
    kl_only:   coef * KL_t                           (dss with every weight 0: the control)

The function returns *sums* over the tokens it sees; the caller divides by the number of
response tokens in the whole global batch, which is what makes the result independent of how
the batch is split across workers and accumulation steps.

KL estimators, with r_t = log p_policy(y_t) - log p_ref(y_t) at the dataset token y_t:
    k1 = r,  k2 = r^2 / 2 (the paper's),  k3 = exp(-r) - 1 + r,
    full = sum_v p_policy(v) (log p_policy(v) - log p_ref(v))  (whole vocabulary).
k2, k3 and full have zero gradient where policy == reference; k1 does not. k1-k3 need only
log p_ref(y_t) (which is why the reference's log-probs can be cached); full needs the
reference's logits.

Memory: the logits of a (batch, length, vocabulary) micro-batch are the largest tensor of a
step (4 GB in fp32 for 4 x 2048 tokens of a 128k vocabulary, and as much again for their
gradient). The loss takes the final hidden states and the output head (hidden.py) and computes
the token terms in chunks of `chunk` positions, each under activation checkpointing: head ->
log-softmax -> CE / KL -> discard, so only one chunk's logits exist at a time, in the forward
pass and again in the backward pass. Every function also takes whole logits (B, T, V) as a
tensor: the identity head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .hidden import Hidden, of_logits
from .kinds import loss_kind

Scores = Union[Hidden, torch.Tensor]
"""Hidden states and their head, or whole logits (B, T, V)."""


@dataclass
class LossSums:
    total: torch.Tensor
    """Sum of per-token losses: differentiate this."""
    ce: torch.Tensor
    """Sum of CE over trained tokens (unweighted), for logging."""
    kl: torch.Tensor
    """Sum of KL over trained tokens (unweighted, 0 without a reference), for logging."""
    weight: torch.Tensor
    """Sum of weights over trained tokens."""
    low_weight: torch.Tensor
    """Trained tokens whose weight is below 0.5."""
    tokens: torch.Tensor
    """Number of trained tokens."""


def kl_estimate(r: torch.Tensor, estimator: str) -> torch.Tensor:
    """k1/k2/k3 from r = log p_policy(y) - log p_ref(y)."""
    if estimator == "k1":
        return r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.exp(-r) - 1.0 + r
    raise ValueError(f"loss.kl.estimator: unknown {estimator!r}")


def _hidden(x: Optional[Scores]) -> Optional[Hidden]:
    return x if x is None or isinstance(x, Hidden) else of_logits(x)


def _chunk_terms(states: torch.Tensor, targets: torch.Tensor,
                 ref_token_logp: Optional[torch.Tensor], ref_states: Optional[torch.Tensor],
                 estimator: str, with_kl: bool, head, ref_head):
    """CE and KL of each position of one chunk (fp32 whatever the model's dtype): the chunk's
    logits exist only inside this function (recomputed in the backward pass)."""
    logp = F.log_softmax(head(states).float(), dim=-1)
    token_logp = logp.gather(-1, targets[..., None])[..., 0]
    if not with_kl:
        return -token_logp, torch.zeros_like(token_logp)
    if estimator == "full":
        ref_logp = F.log_softmax(ref_head(ref_states).float(), dim=-1)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    else:
        kl = kl_estimate(token_logp - ref_token_logp.float(), estimator)
    return -token_logp, kl


def token_terms(logits: Scores, targets: torch.Tensor,
                ref_token_logp: Optional[torch.Tensor] = None,
                ref_logits: Optional[Scores] = None, estimator: str = "k2",
                with_kl: bool = False, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position CE and KL, (B, T) each, for `logits` (hidden states with their head, or
    whole logits (B, T, V)) predicting targets (B, T).

    With with_kl, `estimator=full` needs ref_logits (the reference's, same forms); k1-k3 need
    ref_token_logp (B, T).
    """
    if with_kl and estimator == "full" and ref_logits is None:
        raise ValueError("loss.kl.estimator=full needs the reference model's logits")
    if with_kl and estimator != "full" and ref_token_logp is None:
        raise ValueError("the KL term needs the reference model's log-probs")
    policy, ref = _hidden(logits), _hidden(ref_logits)
    states, ref_states = policy.states, ref.states if ref is not None else None
    ce, kl = [], []
    # max(.., 1): a rank's micro-batch of empty slots is one pad token, nothing to predict,
    # but still one (empty) pass through the graph, like every other rank's
    for s in range(0, max(targets.shape[1], 1), chunk):
        part = (states[:, s:s + chunk], targets[:, s:s + chunk],
                ref_token_logp[:, s:s + chunk] if ref_token_logp is not None else None,
                ref_states[:, s:s + chunk] if ref_states is not None else None,
                estimator, with_kl, policy.head, ref.head if ref is not None else None)
        if torch.is_grad_enabled() and states.requires_grad:
            # determinism_check off: under ZeRO-3 a frozen head's weight (LoRA) is released
            # right after the recomputed call and re-gathered before its backward, so the
            # check would compare an empty placeholder (the result is the same: tested)
            c, k = checkpoint(_chunk_terms, *part, use_reentrant=False,
                              determinism_check="none")
        else:
            c, k = _chunk_terms(*part)
        ce.append(c)
        kl.append(k)
    return torch.cat(ce, dim=1), torch.cat(kl, dim=1)


def reference_token_logprobs(ref_logits: Scores, input_ids: torch.Tensor,
                             chunk: int = 256) -> torch.Tensor:
    """log p_ref(y_t) of each dataset token, (B, T-1): all that k1-k3 need of the reference
    (minus the CE of the same chunked computation the policy's terms use). `ref_logits`: the
    reference's hidden states with their head, or its whole logits."""
    with torch.no_grad():
        ce, _ = token_terms(_hidden(ref_logits)[:, :-1], input_ids[:, 1:], chunk=chunk)
    return -ce


def stardss_loss(logits: Scores, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                 weights: torch.Tensor, kind: str,
                 ref_token_logp: Optional[torch.Tensor] = None,
                 ref_logits: Optional[Scores] = None, kl_coef: float = 0.5,
                 kl_estimator: str = "k2", chunk: int = 256) -> LossSums:
    """Sums of the per-token loss over one micro-batch.

    logits: the policy's hidden states with their head (hidden.py), or whole logits (B, T, V),
    for input_ids (B, T). loss_mask[b, t] = 1 when token t is a trained
    response token; weights[b, t] is its weight (used by rs, reweight and dss). The reference
    enters as ref_token_logp (B, T-1), log p_ref of tokens 1..T-1 (k1-k3), or as ref_logits
    (the same two forms) (full; k1-k3 read their token log-probs from it when that is all there is).
    """
    with_kl = loss_kind(kind).reference  # (an unknown kind is a ValueError naming it)
    if with_kl and ref_token_logp is None and ref_logits is None:
        raise ValueError(f"loss.kind={kind} needs the reference model's log-probs")
    if with_kl and kl_estimator != "full" and ref_token_logp is None:
        ref_token_logp = reference_token_logprobs(ref_logits, input_ids, chunk)
    # Position t predicts token t+1.
    policy, ref = _hidden(logits), _hidden(ref_logits)
    ce, kl = token_terms(policy[:, :-1], input_ids[:, 1:], ref_token_logp,
                         ref[:, :-1] if ref is not None else None,
                         kl_estimator, with_kl, chunk)
    mask = loss_mask[:, 1:].to(ce.dtype)
    w = weights[:, 1:].to(ce.dtype)

    if kind == "sft":
        per_token = ce
    elif kind in ("rs", "reweight"):
        per_token = w * ce
    elif kind == "dss":
        per_token = w * ce + (1.0 - w) * kl_coef * kl
    else:  # kl_only
        per_token = kl_coef * kl

    return LossSums(
        total=(per_token * mask).sum(),
        ce=(ce * mask).sum().detach(),
        kl=(kl * mask).sum().detach(),
        weight=(w * mask).sum(),
        low_weight=((w < 0.5).to(mask.dtype) * mask).sum(),
        tokens=mask.sum(),
    )
