"""What a guardrail's label logits become as a STAR value: `raw` or `authors` (`star.transform`).

raw (the default): P(safe) = softmax over the two label logits at the decision position
    = sigmoid(logit_safe - logit_unsafe). Deterministic, smooth, what the guard model says.

authors: the value the paper's code reads. It scores each prefix with a *sampled* Hugging Face
    `generate(do_sample=True, repetition_penalty=1.2, temperature=0.2, top_k=50, top_p=0.9,
    output_scores=True)` (secml-lab-vt/Optimus, star-dss/config/model/default.yaml
    `generation_args`; the call in star-dss/src/data/value_dataset.py `guardrail_inference`) and
    takes the softmax over the two label entries of the *processed* scores of one generation
    step (star-dss/src/metric/guardrail.py `guardrail_logits_to_prob`: step 1 for Llama Guard 3,
    after its "\\n\\n", step 0 for Granite Guardian; index 0 = the safe label). Processed scores
    are the logits after generate's logits processors, which transformers applies in this order
    (GenerationMixin._get_logits_processor, transformers 5.x):

        repetition penalty   every token id present in the input sequence so far (the whole
                             guard prompt up to the decision position, padding excluded): a
                             logit s becomes s / penalty if s > 0, else s * penalty
        temperature          s / temperature
        top-k                every logit below the k-th largest becomes -inf (ties kept)
        top-p                sorted ascending, the tokens whose cumulative softmax is
                             <= 1 - top_p become -inf (the largest one always stays)

    `authors_probs` computes exactly that from the one-pass logits at the decision position (the
    full vocabulary), in float64, with no sampling: the value the authors' run would read when
    its sampled steps before the label are the guard's usual ones (Llama Guard's "\\n\\n", which
    stardss renders into the prompt). A label cut by top-k / top-p reads exactly 0 (or the other
    exactly 1). If both labels are cut (the guard's mass is on some third token) the authors'
    read-out is softmax([-inf, -inf]) = NaN; here it is the two-label softmax of the penalised,
    tempered logits (the value before the cut), so a weight is always a number.

The shape. With both label logits positive and both labels in the guard prompt (Llama Guard's
instructions name "safe" and "unsafe"), the penalty divides both by 1.2 and the temperature by
0.2, so the value is sigmoid(d / 0.24) for the raw logit difference d: raw 0.40 -> 0.16, 0.50 ->
0.50, 0.60 -> 0.84; top-p then cuts the minority label once its processed probability (plus the
mass of the tokens below it) is <= 0.1, so raw <= ~0.37 reads 0 and >= ~0.63 reads 1. That
shape depends on the raw logits, not on P(safe) alone: negative label logits are multiplied by
1.2 (sigmoid(6 d), a steeper ramp), mixed signs shift it, a label absent from the prompt is not
penalised, and mass on other tokens moves the top-p cut. Use `raw` for soft STAR weights; use
`authors` to reproduce the paper's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..config.schema import AuthorsTransformConfig, StarConfig


def guard_transform(star: StarConfig) -> Optional[AuthorsTransformConfig]:
    """What the guardrails are built with: the authors' knobs, or None for raw."""
    return star.authors if star.transform == "authors" else None


def transform_fingerprint(authors: Optional[AuthorsTransformConfig]) -> tuple:
    """Part of a guardrail's fingerprint under `authors` (raw adds nothing, so raw scores keep
    the keys they had). float(): a config built in code may hold integers (temperature=1)."""
    if authors is None:
        return ()
    return ("authors", float(authors.repetition_penalty), float(authors.temperature),
            int(authors.top_k), float(authors.top_p))


def raw_probs(logits: torch.Tensor, safe_id: int, unsafe_id: int) -> np.ndarray:
    """P(safe) = sigmoid(logit_safe - logit_unsafe) of rows of raw logits [N, V], in float64."""
    d = logits[:, safe_id].double() - logits[:, unsafe_id].double()
    return torch.sigmoid(d).cpu().numpy().astype(np.float64)


def penalised(logits: torch.Tensor, contexts: Sequence[Sequence[int]],
              penalty: float) -> torch.Tensor:
    """Repetition penalty: row i's logits of the ids in contexts[i] divided by `penalty` where
    positive, multiplied by it where negative (ids past the logits' vocabulary are ignored, as
    transformers does)."""
    x = logits.double().clone()
    if penalty == 1.0:
        return x
    n, v = x.shape
    seen = torch.zeros((n, v), dtype=torch.bool, device=x.device)
    for i, ctx in enumerate(contexts):
        ids = torch.as_tensor(list(ctx), dtype=torch.long, device=x.device)
        seen[i, ids[ids < v]] = True
    return torch.where(seen, torch.where(x < 0, x * penalty, x / penalty), x)


def filtered(x: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then top-p (nucleus) filtering of tempered scores [N, V]: removed entries -inf."""
    if top_k > 0:
        kth = torch.topk(x, min(top_k, x.shape[-1])).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(x, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[..., -1:] = False  # the most likely token always stays
        x = x.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return x


def authors_probs(logits: torch.Tensor, contexts: Sequence[Sequence[int]], safe_id: int,
                  unsafe_id: int, cfg: AuthorsTransformConfig) -> np.ndarray:
    """The authors' processed P(safe) of rows of raw logits [N, V] (full vocabulary), row i
    read after the token ids contexts[i] (the sequence the penalty looks at), in float64."""
    if len(contexts) != logits.shape[0]:
        raise ValueError(f"{len(contexts)} contexts for {logits.shape[0]} rows of logits")
    tempered = penalised(logits, contexts, float(cfg.repetition_penalty)) / cfg.temperature
    kept = filtered(tempered, int(cfg.top_k), float(cfg.top_p))
    s, u = kept[:, safe_id], kept[:, unsafe_id]
    before = torch.sigmoid(tempered[:, safe_id] - tempered[:, unsafe_id])
    s_in, u_in = torch.isfinite(s), torch.isfinite(u)
    p = torch.where(s_in & u_in, torch.sigmoid(s - u), before)  # both cut: the value before
    p = torch.where(s_in & ~u_in, torch.ones_like(p), p)
    p = torch.where(~s_in & u_in, torch.zeros_like(p), p)
    return p.cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class LabelReader:
    """How a causal guard's logits at a read position become P(safe): the two label ids and
    the transform (authors=None: raw)."""

    safe_id: int
    unsafe_id: int
    authors: Optional[AuthorsTransformConfig] = None

    @property
    def needs_context(self) -> bool:
        """Whether a read needs the token ids before it (the repetition penalty does)."""
        return self.authors is not None

    def __call__(self, logits: torch.Tensor,
                 contexts: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
        """P(safe) of rows [N, V]; contexts[i] = the token ids up to row i's read position."""
        if self.authors is None:
            return raw_probs(logits, self.safe_id, self.unsafe_id)
        if contexts is None:
            raise ValueError("the authors transform needs each read's token ids")
        return authors_probs(logits, contexts, self.safe_id, self.unsafe_id, self.authors)


__all__ = ["LabelReader", "authors_probs", "filtered", "guard_transform", "penalised",
           "raw_probs", "transform_fingerprint"]
