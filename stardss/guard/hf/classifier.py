"""`HFClassifierGuard`: any sequence classifier as a guardrail.

The (user prompt, assistant response prefix) pair is encoded as a sentence pair,
tokenizer(prompt, response); P(safe) = the softmax over all the model's labels, at
`cfg.safe_label`. Encoders are bidirectional, so prefixes cannot share work: every prefix is one
row (batched `cfg.batch_size` at a time; the mode is irrelevant). Pairs longer than the model's
maximum length are truncated (longest part first) with a warning saying how many.
"""
from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np

from ...config.fields import check_fields
from ...config.schema import GuardrailConfig
from ..base import ScoreRequest, by_request
from ..fingerprint import guard_fingerprint, weights_fingerprint
from .causal import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

# Position-embedding tables of RoBERTa-style models start after the padding index.
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl",
                           "data2vec-text", "ibert", "bertweet", "phobert")


def _max_length(tokenizer, config) -> int:
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        return tok_max
    mpe = getattr(config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        if getattr(config, "model_type", "") in _POSITION_OFFSET_MODELS:
            mpe -= int(getattr(config, "pad_token_id", 1) or 1) + 1
        return mpe
    return 512


class HFClassifierGuard:
    """P(safe) = softmax(logits)[safe label] of a sequence classifier over (prompt, response)."""

    def __init__(self, cfg: GuardrailConfig):
        check_fields(cfg, "guardrail")
        if not cfg.name_or_path:
            raise ValueError(
                "guardrail kind 'hf_classifier' needs name_or_path (a Hub id or folder)")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, dtype=dtype)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        labels = [id2label[i] for i in sorted(id2label)]
        if len(labels) < 2:
            raise ValueError(f"guardrail {cfg.name_or_path!r} has {len(labels)} label(s) "
                             f"{labels}; hf_classifier needs a softmax over >= 2 labels")
        if cfg.safe_label is None or cfg.safe_label not in labels:
            what = "is not set" if cfg.safe_label is None else f"{cfg.safe_label!r} is not a label"
            raise ValueError(f"guardrail {cfg.name_or_path!r}: safe_label {what}; the model's "
                             f"labels (config.id2label) are: {', '.join(map(repr, labels))}")
        if labels.count(cfg.safe_label) > 1:
            raise ValueError(f"guardrail {cfg.name_or_path!r}: label {cfg.safe_label!r} occurs "
                             f"more than once in id2label {id2label}")
        self.labels = labels
        self.safe_index = next(i for i, lab in id2label.items() if lab == cfg.safe_label)
        if self.tokenizer.pad_token is None:
            # Decoder-based classifiers ship without one; padded slots are masked.
            fill = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fill is None:
                raise ValueError(f"tokenizer of {cfg.name_or_path!r} has no pad, eos or unk token")
            self.tokenizer.pad_token = fill
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = _max_length(self.tokenizer, self.model.config)
        self.truncated = 0
        """Pairs cut to max_length so far."""
        self.name = f"{cfg.kind}:{cfg.name_or_path}"
        self.fingerprint = guard_fingerprint(
            "hf_classifier", cfg.kind, cfg.name_or_path, cfg.revision,
            weights_fingerprint(cfg.name_or_path, cfg.revision), cfg.safe_label,
            self.safe_index, self.max_length, str(self.model.dtype))

    def _score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        torch = self._torch
        n = len(prompts)
        out = np.empty(n, dtype=np.float64)
        if n == 0:
            return out
        tok = self.tokenizer
        enc = tok(list(prompts), list(responses), truncation=False)["input_ids"]
        lengths = [len(r) for r in enc]
        over = [i for i, m in enumerate(lengths) if m > self.max_length]
        if over:
            self.truncated += len(over)
            msg = (f"guardrail {self.name}: {len(over)} of {n} (prompt, response) pairs exceed the "
                   f"model's max length {self.max_length} tokens (longest {max(lengths)}) and are "
                   "truncated, longest part first: their scores see only the kept tokens")
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
        order = sorted(range(n), key=lambda i: -lengths[i])
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                rows = order[s : s + self.batch_size]
                batch = tok([prompts[i] for i in rows], [responses[i] for i in rows],
                            padding=True, truncation="longest_first", max_length=self.max_length,
                            return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.double()
                probs = torch.softmax(logits, dim=-1)[:, self.safe_index]
                out[rows] = probs.cpu().numpy()
        return out

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [float(p) for p in self._score_pairs([prompt] * len(responses), list(responses))]

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        # A request's `context` (earlier turns) is ignored on purpose: a sequence classifier
        # reads exactly one (prompt, response) text pair, the input it was trained on; folding
        # earlier turns into either text would feed it inputs it never saw. Multi-turn rows
        # score as their last exchange alone.
        prompts = [r.prompt for r in requests for _ in r.cuts]
        responses = [prefix for r in requests for prefix in r.prefixes]
        return [np.asarray(v, dtype=np.float64)
                for v in by_request(requests, self._score_pairs(prompts, responses))]


__all__ = ["HFClassifierGuard"]
