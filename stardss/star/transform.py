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

Label groups. A guard with more than two labels (Qwen3Guard: Safe / Unsafe / Controversial)
reads a safe *group* and an unsafe group of ids (`LabelReader.safe_ids` / `unsafe_ids`):
raw P(safe) = softmax over every label id restricted to the safe group
= sigmoid(logsumexp(safe logits) - logsumexp(unsafe logits)). The authors' transform applies
the same processing (penalty, temperature, top-k, top-p) to the full vocabulary, then takes
those group sums over the processed scores: a label cut by top-k / top-p adds nothing to its
group; a group with every label cut reads 0 (the other group 1); both groups cut -> the value
before the cut, as for two labels. Groups of one id each run the two-label code exactly.
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


def _group_diff(x: torch.Tensor, safe_ids: Sequence[int], unsafe_ids: Sequence[int]):
    """logsumexp(x[:, safe group]) - logsumexp(x[:, unsafe group]) per row, float64 (a group
    whose entries are all -inf gives -inf; both -inf gives NaN)."""
    s = torch.logsumexp(x[:, list(safe_ids)].double(), dim=-1)
    u = torch.logsumexp(x[:, list(unsafe_ids)].double(), dim=-1)
    return s, u


def group_raw_probs(logits: torch.Tensor, safe_ids: Sequence[int],
                    unsafe_ids: Sequence[int]) -> np.ndarray:
    """P(safe) over label groups = sigmoid(logsumexp(safe) - logsumexp(unsafe)), float64."""
    s, u = _group_diff(logits, safe_ids, unsafe_ids)
    return torch.sigmoid(s - u).cpu().numpy().astype(np.float64)


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


def authors_probs(logits: torch.Tensor, contexts: Sequence[Sequence[int]], safe_id,
                  unsafe_id, cfg: AuthorsTransformConfig) -> np.ndarray:
    """The authors' processed P(safe) of rows of raw logits [N, V] (full vocabulary), row i
    read after the token ids contexts[i] (the sequence the penalty looks at), in float64.
    `safe_id` / `unsafe_id`: one id each, or a tuple of ids each (label groups, module doc)."""
    if len(contexts) != logits.shape[0]:
        raise ValueError(f"{len(contexts)} contexts for {logits.shape[0]} rows of logits")
    tempered = penalised(logits, contexts, float(cfg.repetition_penalty)) / cfg.temperature
    kept = filtered(tempered, int(cfg.top_k), float(cfg.top_p))
    if isinstance(safe_id, (tuple, list)) or isinstance(unsafe_id, (tuple, list)):
        sg = tuple(safe_id) if isinstance(safe_id, (tuple, list)) else (safe_id,)
        ug = tuple(unsafe_id) if isinstance(unsafe_id, (tuple, list)) else (unsafe_id,)
        s, u = _group_diff(kept, sg, ug)
        bs, bu = _group_diff(tempered, sg, ug)
        before = torch.sigmoid(bs - bu)
    else:
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
    safe_ids: tuple = ()
    """The whole safe group (safe_id first) when it has more than one id; () = (safe_id,)."""
    unsafe_ids: tuple = ()

    @classmethod
    def of(cls, safe, unsafe, authors: Optional[AuthorsTransformConfig] = None) -> "LabelReader":
        """A reader of one id each (ints) or of label groups (sequences of ids)."""
        sg = tuple(int(i) for i in safe) if isinstance(safe, (tuple, list)) else (int(safe),)
        ug = tuple(int(i) for i in unsafe) if isinstance(unsafe, (tuple, list)) else (
            int(unsafe),)
        if not sg or not ug or set(sg) & set(ug):
            raise ValueError(f"label groups must be non-empty and disjoint, got {sg} / {ug}")
        if len(sg) == 1 and len(ug) == 1:
            return cls(sg[0], ug[0], authors)
        return cls(sg[0], ug[0], authors, sg, ug)

    @property
    def grouped(self) -> bool:
        return len(self.safe_ids) > 1 or len(self.unsafe_ids) > 1

    @property
    def needs_context(self) -> bool:
        """Whether a read needs the token ids before it (the repetition penalty does)."""
        return self.authors is not None

    def __call__(self, logits: torch.Tensor,
                 contexts: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
        """P(safe) of rows [N, V]; contexts[i] = the token ids up to row i's read position."""
        safe = (self.safe_ids or (self.safe_id,)) if self.grouped else self.safe_id
        unsafe = (self.unsafe_ids or (self.unsafe_id,)) if self.grouped else self.unsafe_id
        if self.authors is None:
            if self.grouped:
                return group_raw_probs(logits, safe, unsafe)
            return raw_probs(logits, self.safe_id, self.unsafe_id)
        if contexts is None:
            raise ValueError("the authors transform needs each read's token ids")
        return authors_probs(logits, contexts, safe, unsafe, self.authors)


__all__ = ["LabelReader", "authors_probs", "filtered", "group_raw_probs", "guard_transform",
           "penalised", "raw_probs", "transform_fingerprint"]
