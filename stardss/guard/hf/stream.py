"""`Qwen3GuardStream`: Qwen3Guard-Stream (Qwen/Qwen3Guard-Stream-0.6B/4B/8B) as a guardrail.

The model is a Qwen3 backbone with token-level classification heads: for every token of the
assistant turn it gives a risk level (Safe / Unsafe / Controversial) and a category. Its code
ships with its weights (`modeling_qwen3_guard.py`, class `Qwen3ForGuardModel`, loaded through
`AutoModel` with `trust_remote_code=True`, as the model card and the QwenLM/Qwen3Guard README
load it), so it is loaded only when the `guardrails` entry sets `trust_remote_code: true`.

Input layout (the card's): the conversation rendered with the tokenizer's own chat template,
`apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
enable_thinking=False)`, messages = the row's earlier turns (`ScoreRequest.context`), the user
prompt and the assistant response; the card streams the assistant's tokens after the user
turn's <|im_end|> and reads `risk_level` (the response head, `risk_level_logits` of
`GuardLogitsOutputWithPast`, labels by `model.response_risk_level_map`) at each one.

STAR with one pass per response: the rendered conversation is tokenised once (with character
offsets) and run through the model once; P(safe) at every token is the softmax of
`risk_level_logits` over the three levels: P(Safe), plus P(Controversial) when
`controversial: safe` (the card's loose mode; `unsafe`, the default, is its strict mode). The
score of prefix k (`request.cuts[k]`, a character offset into the response) is the verdict at
the last guard token that lies wholly within response[:cuts[k]] (the tokens of the template
before the response count too, so an empty prefix reads the token that opens the turn).

What differs from re-scoring each prefix (the other families' STAR):
- Attention is causal, so the verdict at token t sees only tokens <= t: it IS the verdict a
  re-score of the prefix ending at t would give, bit for bit up to float reduction order, when
  the prefix text tokenises as the first tokens of the whole response does.
- Tokenisation at a cut: a guard token that straddles a cut (a merge across it, or the bytes of
  one multi-byte character split over tokens) is not part of the prefix, so that prefix reads
  the token before it, while a re-score would tokenise the cut text on its own.
- The end of the turn: a prefix re-score renders a complete turn, so its verdict follows the
  template's closing tokens (<|im_end|>\\n); the stream verdict is read at the prefix's last
  response token, as the card reads it while the response is still being generated. The full
  response is read at its last token too (`score` reads the same position), not at <|im_end|>.
- The chat template strips leading newlines of the response (`content.lstrip('\\n')`): cuts
  inside them read the token that opens the turn.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from pathlib import Path
from typing import Sequence

import numpy as np

from ...config.fields import check_fields
from ...config.schema import GuardrailConfig
from ..base import ScoreRequest
from ..fingerprint import guard_fingerprint, weights_fingerprint
from .causal import resolve_device, resolve_dtype
from .rows import ScoreStats

RISK_LEVELS = ("Safe", "Unsafe", "Controversial")
"""The response risk levels the model card names; looked up by name in the model's map."""

_TEMPLATE_KWARGS = {"add_generation_prompt": False, "enable_thinking": False}
"""The card's apply_chat_template arguments (besides tokenize=False)."""


def _code_fingerprint(name_or_path: str) -> str:
    """sha256 of the remote code of a local folder (its .py files), which decides what the
    weights compute; a Hub id's commit (in weights_fingerprint) already covers its code."""
    path = Path(name_or_path)
    if not path.is_dir():
        return ""
    h = hashlib.sha256()
    for p in sorted(path.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


class Qwen3GuardStream:
    """P(safe) of every prefix of a response from one forward pass of Qwen3Guard-Stream."""

    def __init__(self, cfg: GuardrailConfig):
        check_fields(cfg, "guardrail")
        if not cfg.name_or_path:
            raise ValueError("guardrail kind 'qwen3guard_stream' needs name_or_path (a Hub id or "
                             "folder)")
        if not cfg.trust_remote_code:
            raise ValueError(
                f"guardrail {cfg.name_or_path!r} (kind qwen3guard_stream) runs model code that "
                "ships with its weights: set guardrails[..].trust_remote_code: true to load it")
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self._torch = torch
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.controversial = cfg.controversial
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                       trust_remote_code=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"guardrail {cfg.name_or_path!r}: its tokenizer has no chat "
                             "template (qwen3guard_stream renders the conversation with it)")
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"guardrail {cfg.name_or_path!r}: its tokenizer has no pad token")
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                            trust_remote_code=True)
        model = AutoModel.from_pretrained(cfg.name_or_path, revision=cfg.revision, config=config,
                                          trust_remote_code=True, dtype=dtype)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_tokens = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        """The longest guard input the model's positions cover (None: not stated)."""
        self.levels = self._risk_levels(config)
        self.safe_index = [self.levels["safe"]]
        if self.controversial == "safe":
            self.safe_index.append(self.levels["controversial"])
        self.name = f"{cfg.kind}:{cfg.name_or_path}"
        self.fingerprint = guard_fingerprint(
            "qwen3guard_stream", cfg.kind, cfg.name_or_path, cfg.revision,
            weights_fingerprint(cfg.name_or_path, cfg.revision),
            _code_fingerprint(cfg.name_or_path), self.tokenizer.chat_template,
            sorted(_TEMPLATE_KWARGS.items()), sorted(self.levels.items()), self.controversial,
            str(self.model.dtype), "last-token-within-cut")
        self.stats = ScoreStats()
        """Tokens and forwards run so far (one row per response)."""

    def _risk_levels(self, config) -> dict[str, int]:
        """Index of each risk level in `risk_level_logits`, by name (never by position)."""
        raw = getattr(self.model, "response_risk_level_map", None)
        if raw is None:
            raw = getattr(config, "response_risk_level_map", None)
        if not raw:
            raise ValueError(f"guardrail {self.cfg.name_or_path!r}: no response_risk_level_map "
                             "in the model or its config.json (is it a Qwen3Guard-Stream model?)")
        by_name = {str(v).casefold(): int(k) for k, v in dict(raw).items()}
        missing = [lv for lv in RISK_LEVELS if lv.casefold() not in by_name]
        if missing or len(by_name) != len(dict(raw)):
            raise ValueError(f"guardrail {self.cfg.name_or_path!r}: response_risk_level_map "
                             f"{dict(raw)} lacks {missing or 'distinct names'}; qwen3guard_stream "
                             f"needs {', '.join(RISK_LEVELS)}")
        return {lv.casefold(): by_name[lv.casefold()] for lv in RISK_LEVELS}

    # ---- rendering: where the response sits in the guard's input ------------------------

    def _render(self, request: ScoreRequest, response: str) -> str:
        messages = [dict(m) for m in request.context]
        messages += [{"role": "user", "content": request.prompt},
                     {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **_TEMPLATE_KWARGS)

    def layout(self, request: ScoreRequest) -> tuple[str, int, int]:
        """(rendered text, where the response's kept text starts in it, how many leading
        characters of the response the template dropped)."""
        kept = request.response.lstrip("\n")
        lead = len(request.response) - len(kept)
        text, empty = self._render(request, request.response), self._render(request, "")
        if len(text) - len(empty) == len(kept):
            at = 0
            while at < len(empty) and text[at] == empty[at]:
                at += 1
            for start in range(at, -1, -1):
                if (text[start : start + len(kept)] == kept and text[:start] == empty[:start]
                        and text[start + len(kept) :] == empty[start:]):
                    return text, start, lead
        raise ValueError(f"guardrail {self.name}: row {request.key!r}: the chat template does not "
                         "render the response verbatim (e.g. it holds '</think>'), so its "
                         "characters cannot be mapped to guard tokens")

    def _rows(self, requests: Sequence[ScoreRequest]):
        """Per request: token ids, token end offsets, response start, leading characters."""
        layouts = [self.layout(r) for r in requests]
        enc = self.tokenizer([t for t, _, _ in layouts], add_special_tokens=False,
                             return_offsets_mapping=True)
        rows = []
        for req, (_, start, lead), ids, offsets in zip(requests, layouts, enc["input_ids"],
                                                        enc["offset_mapping"]):
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                raise ValueError(f"guardrail {self.name}: row {req.key!r}: its conversation is "
                                 f"{len(ids)} guard tokens, over the model's {self.max_tokens} "
                                 "positions (max_position_embeddings)")
            ends = np.maximum.accumulate(np.asarray([e for _, e in offsets], dtype=np.int64))
            rows.append((list(ids), ends.tolist(), start, lead))
        return rows

    # ---- the model ----------------------------------------------------------------------

    def token_psafe(self, ids_rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """P(safe) at every token of each id row (float64), one forward per batch of rows,
        right-padded (causal attention: padding after a row never reaches its tokens)."""
        torch = self._torch
        out: list[np.ndarray] = [np.empty(0)] * len(ids_rows)
        order = sorted(range(len(ids_rows)), key=lambda i: -len(ids_rows[i]))
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                rows = order[s : s + self.batch_size]
                width = len(ids_rows[rows[0]])
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for b, i in enumerate(rows):
                    ids[b, : len(ids_rows[i])] = torch.tensor(ids_rows[i], dtype=torch.long)
                    mask[b, : len(ids_rows[i])] = 1
                res = self.model(input_ids=ids.to(self.device),
                                 attention_mask=mask.to(self.device), use_cache=False)
                probs = torch.softmax(res.risk_level_logits.double(), dim=-1)
                safe = probs[..., self.safe_index].sum(-1).cpu().numpy()
                for b, i in enumerate(rows):
                    out[i] = safe[b, : len(ids_rows[i])].astype(np.float64)
                self.stats.forwards += 1
                self.stats.padded_tokens += len(rows) * width
        self.stats.prompts += len(ids_rows)
        self.stats.tokens += sum(len(r) for r in ids_rows)
        return out

    # ---- the Guardrail protocol ---------------------------------------------------------

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        rows = self._rows(requests)
        psafe = self.token_psafe([ids for ids, _, _, _ in rows])
        out = []
        for req, (_, ends, start, lead), p in zip(requests, rows, psafe):
            vals = np.empty(len(req.cuts), dtype=np.float64)
            for k, cut in enumerate(req.cuts):
                if not 0 <= cut <= len(req.response):
                    raise ValueError(f"row {req.key!r}: cut {cut} is outside its response "
                                     f"(length {len(req.response)})")
                # The template's tokens before the response end before `start`: at >= 0.
                at = bisect_right(ends, start + max(cut - lead, 0)) - 1
                vals[k] = p[at]
            out.append(vals)
        return out

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        requests = [ScoreRequest(str(i), prompt, r, [len(r)]) for i, r in enumerate(responses)]
        return [float(v[0]) for v in self.score_prefixes(requests)]


__all__ = ["Qwen3GuardStream", "RISK_LEVELS"]
