"""`HFCausalGuard`: a causal-LM guardrail (Llama Guard, Granite Guardian, ShieldGemma, WildGuard,
Qwen3Guard-Gen, NemoGuard content safety).

The family's prompt format (template, label tokens, decision position) comes from
`formats.load_format`; this class loads the model and scores through `packed.py`:
`score` runs one forward per response, `score_prefixes` shares each response's prefix work
(cfg.mode == "packed") or runs one forward per prefix prompt (cfg.mode == "naive").

A format whose verdict follows teacher-forced earlier answers (WildGuard's "Harmful request" and
"Response refusal" lines, NemoGuard's "User Safety" value) is scored over all its branches
(`GuardFormat.branches`): P(safe) =
sum over branches of P(forced answers) * P(safe | them), each answer's probability read as the
two-label softmax at its own position of the same pass, so the verdict is the model's marginal,
not one conditioned on guessed answers.

A format with label groups (Qwen3Guard: Safe / Unsafe / Controversial) reads P(safe) as the
softmax over all its label ids restricted to the safe group (formats.py); a request's `context`
(the earlier turns) is rendered by the family's template before the judged pair.

`transform` (star.transform=authors: the `AuthorsTransformConfig`, else None) turns every read
into the authors' processed value (stardss/star/transform.py), the forced answers' reads of a
branched format included; it is part of the fingerprint, so raw and authors scores never share a
STAR cache entry (raw adds nothing to it: raw keys stay as they were).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...config.fields import check_choice, check_fields
from ...config.schema import AuthorsTransformConfig, GuardrailConfig
from ...star.transform import transform_fingerprint
from ..base import ScoreRequest, by_request
from ..fingerprint import guard_fingerprint, weights_fingerprint
from .packed import ScoreStats, naive_reads, packed_reads, tokenize


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"guardrail device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"guardrail device {device!r}: CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str):
    """The torch dtype of a guardrail's `dtype` (one of the field's choices)."""
    import torch

    check_choice(GuardrailConfig, "dtype", dtype, "guardrail dtype")
    return getattr(torch, dtype)  # the choices are torch's own dtype names


class HFCausalGuard:
    """A guard LM that answers with a label token: P(safe) = softmax over the (safe, unsafe)
    label logits at the decision position of the family's prompt (raw), or the authors'
    processed value of those logits (`transform`)."""

    def __init__(self, cfg: GuardrailConfig,
                 transform: Optional[AuthorsTransformConfig] = None):
        check_fields(cfg, "guardrail")
        if not cfg.name_or_path:
            raise ValueError(f"guardrail kind {cfg.kind!r} needs name_or_path (a Hub id or folder)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .formats import load_format

        self.cfg = cfg
        self.transform = transform
        self.mode = cfg.mode
        self.batch_size = cfg.batch_size
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                     dtype=dtype)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.format = load_format(cfg, self.tokenizer)
        self.safe_id = int(self.format.safe_id)
        self.unsafe_id = int(self.format.unsafe_id)
        # What the readers take: one id each, or the label groups (their sums are P(safe)).
        grouped = getattr(self.format, "grouped", False)
        self._safe = tuple(self.format.safe_ids) if grouped else self.safe_id
        self._unsafe = tuple(self.format.unsafe_ids) if grouped else self.unsafe_id
        self.name = f"{cfg.kind}:{cfg.name_or_path}"
        # Formats with teacher-forced earlier answers (WildGuard) are scored exactly: the
        # verdict marginalised over those answers, all branches in one pass (formats.py).
        branches = getattr(self.format, "branches", None)
        probe = branches("hi", "ok") if branches is not None else []
        self.branched = len(probe) > 1 or any(b.steps for b in probe)
        self.fingerprint = guard_fingerprint(
            "hf_causal", cfg.kind, cfg.name_or_path, cfg.revision,
            weights_fingerprint(cfg.name_or_path, cfg.revision), self.format.fingerprint,
            "branches" if self.branched else "render", str(self.model.dtype),
            *transform_fingerprint(transform))
        self.stats = ScoreStats()
        """Tokens and forwards run so far (both modes)."""

    def render(self, prompt: str, response: str, context: Sequence[dict] = ()) -> str:
        return self.format.render(prompt, response, context)

    # A scored pair is one or more rows (teacher-forced branches): token ids, the positions whose
    # two-label softmax is read, and for every read but the last the label forced after it.

    def _rows(self, pairs: Sequence[tuple[str, str, tuple]]) -> list[list[tuple[list[int],
                                                                              list[int],
                                                                              list[bool]]]]:
        """For each (prompt, response[, context]): its rows (ids, reads, forced_safe)."""
        pairs = [(q[0], q[1], tuple(q[2]) if len(q) > 2 else ()) for q in pairs]
        if not self.branched:
            ids = tokenize(self.tokenizer, [self.format.render(p, r, c) for p, r, c in pairs])
            return [[(x, [len(x) - 1], [])] for x in ids]
        branches = [self.format.branches(p, r, c) for p, r, c in pairs]
        texts, heads = [], []
        for brs in branches:
            for b in brs:
                texts.append(b.text)
                heads.extend(b.text[:off] for off, _ in b.steps)
        ids = tokenize(self.tokenizer, texts)
        head_ids = tokenize(self.tokenizer, heads)
        out, ti, hi = [], 0, 0
        for brs in branches:
            rows = []
            for b in brs:
                x = ids[ti]
                ti += 1
                reads, forced = [], []
                for off, label in b.steps:
                    h = head_ids[hi]
                    hi += 1
                    if x[: len(h)] != h or len(h) >= len(x):
                        raise ValueError(
                            f"guardrail {self.name}: a teacher-forced answer {label!r} does not "
                            f"start a new token after {b.text[max(0, off - 40):off]!r}; its "
                            "decision position is not a token boundary")
                    reads.append(len(h) - 1)
                    forced.append(label == self.format.safe_label)
                reads.append(len(x) - 1)
                rows.append((x, reads, forced))
            out.append(rows)
        return out

    @staticmethod
    def _combine(rows, probs) -> float:
        """P(safe) = sum over branches of prod(P(forced answers)) * P(safe at the end)."""
        total = 0.0
        for (_, _, forced), p in zip(rows, probs):
            w = 1.0
            for is_safe, q in zip(forced, p[:-1]):
                w *= q if is_safe else 1.0 - q
            total += w * float(p[-1])
        return total

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        rows = self._rows([(prompt, r, ()) for r in responses])
        flat = [row for rs in rows for row in rs]
        probs = naive_reads(self.model, [r[0] for r in flat], self._safe, self._unsafe,
                            self.batch_size, self.stats, reads=[r[1] for r in flat],
                            transform=self.transform)
        out, at = [], 0
        for rs in rows:
            out.append(self._combine(rs, probs[at : at + len(rs)]))
            at += len(rs)
        return out

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        pairs = [(r.prompt, prefix, tuple(r.context)) for r in requests
                 for prefix in r.prefixes]
        rows = self._rows(pairs)
        # One group per response: its prefixes' rows in order, the full response's last (base).
        groups = by_request(requests, rows)
        flat_groups = [[row for rs in g for row in rs] for g in groups]
        if self.mode == "packed":
            probs = packed_reads(self.model, [[r[0] for r in g] for g in flat_groups],
                                 self._safe, self._unsafe, self.batch_size, self.stats,
                                 reads=[[r[1] for r in g] for g in flat_groups],
                                 transform=self.transform)
        else:
            flat = [r for g in flat_groups for r in g]
            res = naive_reads(self.model, [r[0] for r in flat], self._safe, self._unsafe,
                              self.batch_size, self.stats, reads=[r[1] for r in flat],
                              transform=self.transform)
            probs, at = [], 0
            for g in flat_groups:
                probs.append(res[at : at + len(g)])
                at += len(g)
        out = []
        for g, p in zip(groups, probs):
            vals, at = [], 0
            for rs in g:
                vals.append(self._combine(rs, p[at : at + len(rs)]))
                at += len(rs)
            out.append(np.asarray(vals, dtype=np.float64))
        return out


__all__ = ["HFCausalGuard", "weights_fingerprint", "guard_fingerprint", "resolve_device",
           "resolve_dtype"]
