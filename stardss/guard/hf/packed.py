"""Exact prefix scoring for causal-LM guardrails: one pass over the full response, KV reuse.

STAR asks a guardrail about every prefix y[:c_1], y[:c_2], ..., y of a response. The guard prompt
of prefix k, render(x, y[:c_k]), shares a long token prefix with the prompt of the full response
(the template's head, the user turn, most of the response). Attention is causal, so the key/value
states of a shared token prefix are the same whichever sequence they sit in. `score_packed`:

1. tokenises every prefix prompt exactly as naive scoring would (ids_k);
2. runs the *base*, the prompt of the full response (scored anyway), once with a KV cache;
3. for prefix k, finds L_k = the length of the longest common token-id prefix of ids_k and the
   base ids (this handles BPE merges across the cut exactly: tokens that differ are recomputed)
   and runs only the tail ids_k[L_k:], at position ids L_k + i, attending to the base's cached
   states [0, L_k) and nothing after them;
4. reads P(safe) at the last token of ids_k from that position's logits, in float64: by default
   sigmoid(logit[safe] - logit[unsafe]) (= the softmax over the two label tokens); with the
   authors transform (`transform=`, stardss/star/transform.py) the authors' processed value,
   whose repetition penalty sees the ids of the sequence up to the read (base + tail here).

Tails of many responses share a forward pass (`batch_size` rows): rows are sorted by tail length
(then reuse), each row's cache is gathered from its own base's states [0, P) (P = the chunk's
longest L; states [L_k, P) are hidden by the 2D attention mask, so they add exactly nothing) into a
buffer the forward appends the tail's states to in place; tails are right-padded, so no row is
ever fully masked. Sliding-window models are exact as long as a chunk fits the window; chunks that
would not are scored naively (counted in `ScoreStats.fallback_prompts`).

`score_naive` is the reference: one (batched, right-padded) forward per prefix prompt.
Both count the tokens they run through the model in a `ScoreStats`. `naive_reads` /
`packed_reads` are the same on token ids, reading P(safe) at several positions of a sequence if
asked (teacher-forced multi-step verdicts such as WildGuard's three answer lines).
`safe_id` / `unsafe_id` are one token id each, or a tuple of ids each for a guard with label
groups (Qwen3Guard's three labels): P(safe) is then the softmax over all label ids restricted to
the safe group (stardss/star/transform.py); one id each runs the two-label code unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...config.schema import AuthorsTransformConfig
from ...star.transform import LabelReader
from .kvcache import cache_kw, kv_bytes_per_token, out_cache, prefilled_cache, sliding_window
from .rows import (
    Reads,
    ScoreStats,
    check_reads,
    common_prefix_len,
    keep_index,
    naive_token_count,
    packed_token_count,
    right_padded,
    tokenize,
)

# Bytes of base-response KV states kept alive at once when the caller gives no token limit:
# responses are processed in windows that fit it (each window batches its tails together).
DEFAULT_CACHE_BYTES = 2 * 1024**3


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(model) -> int:
    # Padded slots are masked out and their outputs never read: any valid id serves.
    pid = getattr(model.config, "pad_token_id", None)
    if isinstance(pid, int) and 0 <= pid < model.config.get_text_config().vocab_size:
        return pid
    return 0


def _row_probs(logits: torch.Tensor, reads: list[list[int]], seqs: Sequence[Sequence[int]],
               reader: LabelReader) -> list[np.ndarray]:
    """P(safe) at each row's reads (logits [B, R, V], reads padded by repetition as in
    `keep_index`). A read's context is its row's ids up to and including the read position:
    the sequence a `generate` would hold when it writes the label there."""
    B, R, V = logits.shape
    ctx = None
    if reader.needs_context:
        ctx = [seqs[b][: r[min(j, len(r) - 1)] + 1] for b, r in enumerate(reads)
               for j in range(R)]
    p = reader(logits.reshape(B * R, V), ctx).reshape(B, R)
    return [p[b, : len(r)].copy() for b, r in enumerate(reads)]


# ---------------------------------------------------------------------------------------------
# naive


def naive_reads(model, seqs: Sequence[Sequence[int]], safe_id, unsafe_id,
                batch_size: int, stats: Optional[ScoreStats] = None, reads: Reads = None,
                transform: Optional[AuthorsTransformConfig] = None) -> list[np.ndarray]:
    """P(safe) at the read positions of each id sequence (default: its last token); one forward
    per sequence, batched `batch_size` at a time, right-padded, explicit position ids.
    `transform`: the authors' knobs (None: the raw two-label softmax)."""
    return _naive(model, seqs, LabelReader.of(safe_id, unsafe_id, transform), batch_size, stats,
                  reads)


def _naive(model, seqs: Sequence[Sequence[int]], reader: LabelReader, batch_size: int,
           stats: Optional[ScoreStats], reads: Reads) -> list[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seqs = [list(s) for s in seqs]
    reads = check_reads(seqs, reads)
    n = len(seqs)
    out: list = [None] * n
    if n == 0:
        return out
    device, pad = _device(model), _pad_id(model)
    order = sorted(range(n), key=lambda i: -len(seqs[i]))
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            rows = order[s : s + batch_size]
            row_seqs = [seqs[i] for i in rows]
            ids, mask, pos = right_padded(row_seqs, pad)
            lens, T = [len(q) for q in row_seqs], ids.shape[1]
            row_reads = [reads[i] for i in rows]
            keep = keep_index(row_reads, [0] * len(rows))
            res = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=pos.to(device), use_cache=False,
                        logits_to_keep=keep.to(device))
            for i, p in zip(rows, _row_probs(res.logits, row_reads, row_seqs, reader)):
                out[i] = p
            if stats is not None:
                stats.prompts += len(rows)
                stats.tokens += sum(lens)
                stats.padded_tokens += len(rows) * T
                stats.forwards += 1
    return out


def score_naive(model, tokenizer, texts: Sequence[str], safe_id: int, unsafe_id: int,
                batch_size: int, stats: Optional[ScoreStats] = None,
                transform: Optional[AuthorsTransformConfig] = None) -> np.ndarray:
    """P(safe) of each full guard-prompt text, read at its last token (the decision position).

    One forward per prompt (batched `batch_size` at a time, right-padded with an attention mask
    and explicit position ids, so the result does not depend on padding or batch company)."""
    probs = naive_reads(model, tokenize(tokenizer, texts), safe_id, unsafe_id, batch_size, stats,
                        transform=transform)
    return np.asarray([p[-1] for p in probs], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# packed


@dataclass
class _Tail:
    """A prefix prompt run over its base's cached states [0, L)."""

    group: int
    index: int  # prompt index within the group
    ids: list[int]  # full ids of the prompt
    reads: list[int]  # positions read (absolute)
    L: int  # cached states reused from the base


def _base_batches(bases: list[list[int]], batch_size: int, device: torch.device):
    """Row groups for the base forwards. A base (the whole response's prompt) is hundreds of
    tokens: it fills a forward by itself. On CPU, padding a batch of bases costs more than it
    saves (a padded batch needs an explicit dense mask, so attention loses its causal block
    skipping, and the larger activations leave the caches), so only bases of equal length share
    a forward there; elsewhere bases are batched `batch_size` at a time, sorted by length."""
    order = sorted(range(len(bases)), key=lambda i: -len(bases[i]))
    if device.type != "cpu":
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and len(bases[out[-1][0]]) == len(bases[i]):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _run_bases(model, bases: list[list[int]], base_reads: list[list[int]], reader: LabelReader,
               batch_size: int, keep_len: int, stats: Optional[ScoreStats]):
    """Forward each base once with a KV cache. Returns (P(safe) at each base's reads, store)
    where store = ([keys], [values]) per layer, [n_bases, H, keep_len, D]: base i's states in
    row i, positions [0, min(len_i, keep_len)), zeros after (finite: masked slots stay exact)."""
    from transformers import DynamicCache

    n = len(bases)
    probs: list = [None] * n
    device, pad, kw = _device(model), _pad_id(model), cache_kw(model)
    store_k: list[torch.Tensor] = []
    store_v: list[torch.Tensor] = []
    for rows in _base_batches(bases, batch_size, device):
        ids, mask, pos = right_padded([bases[i] for i in rows], pad)
        lens, T = [len(bases[i]) for i in rows], ids.shape[1]
        row_reads = [base_reads[i] for i in rows]
        keep = keep_index(row_reads, [0] * len(rows))
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=pos.to(device), use_cache=True, logits_to_keep=keep.to(device),
                    **{kw: DynamicCache()})
        cache = out_cache(res)
        layers = list(cache.layers)
        for li, layer in enumerate(layers):
            k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
            if k is None or v is None or k.dim() != 4 or k.shape[-2] != T:
                raise RuntimeError(
                    f"packed scoring needs a full KV cache per layer; {type(layer).__name__} "
                    f"holds {None if k is None else tuple(k.shape)} for {T} positions "
                    "(use guardrail mode=naive for this model)")
            if len(store_k) <= li:
                store_k.append(k.new_zeros((n, k.shape[1], keep_len, k.shape[3])))
                store_v.append(v.new_zeros((n, v.shape[1], keep_len, v.shape[3])))
            m = min(T, keep_len)
            idx = torch.tensor(rows, dtype=torch.long, device=k.device)
            store_k[li][:, :, :m].index_copy_(0, idx, k[:, :, :m])
            store_v[li][:, :, :m].index_copy_(0, idx, v[:, :, :m])
        for i, p in zip(rows, _row_probs(res.logits, row_reads, [bases[i] for i in rows], reader)):
            probs[i] = p
        del res, cache, layers
        if stats is not None:
            stats.prompts += len(rows)
            stats.tokens += sum(lens)
            stats.padded_tokens += len(rows) * T
            stats.forwards += 1
    return probs, (store_k, store_v)


def _run_tails(model, tails: list[_Tail], base_row: dict, store, batch_size: int,
               reader: LabelReader, stats: Optional[ScoreStats]) -> list[np.ndarray]:
    """P(safe) at the reads of each tail row, run over its base's cached states [0, L)."""
    n = len(tails)
    out: list = [None] * n
    if n == 0:
        return out
    device, pad, kw = _device(model), _pad_id(model), cache_kw(model)
    store_k, store_v = store
    window = sliding_window(model)
    # Longest tails first, then longest reuse: similar rows share a chunk, padding stays low.
    order = sorted(range(n), key=lambda i: (-(len(tails[i].ids) - tails[i].L), -tails[i].L))
    # One flat buffer per layer, reused by every chunk as its contiguous [B, H, P + T, D] cache:
    # a fresh allocation per chunk would cost as much again in page faults as the gather itself.
    flat_k = [k.new_empty(batch_size * k[0].numel()) for k in store_k]
    flat_v = [v.new_empty(batch_size * v[0].numel()) for v in store_v]
    fallback: list[int] = []
    for s in range(0, n, batch_size):
        rows = order[s : s + batch_size]
        Ls = [tails[i].L for i in rows]
        ns = [len(tails[i].ids) - tails[i].L for i in rows]
        P, T, B = max(Ls), max(ns), len(rows)
        if window is not None and P + T > window:
            # Padded cache coordinates would stretch distances past the window: not exact.
            fallback.extend(rows)
            continue
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, P + T), dtype=torch.long)
        pos = torch.empty((B, T), dtype=torch.long)
        for r, i in enumerate(rows):
            t = tails[i]
            ids[r, : ns[r]] = torch.tensor(t.ids[t.L :], dtype=torch.long)
            mask[r, : Ls[r]] = 1  # states [L, P) of the row's base stay hidden
            mask[r, P : P + ns[r]] = 1
            pos[r] = torch.arange(Ls[r], Ls[r] + T, dtype=torch.long)
        row_reads = [tails[i].reads for i in rows]
        keep = keep_index(row_reads, Ls)
        kwargs = {}
        if P > 0:
            idx = torch.tensor([base_row[tails[i].group] for i in rows], dtype=torch.long,
                               device=store_k[0].device)
            # One gather per layer: rows' base states [0, P) plus room for the tail's states.
            keys, values = [], []
            for src, flat, dst in ((store_k, flat_k, keys), (store_v, flat_v, values)):
                for x, buf in zip(src, flat):
                    shape = (B, x.shape[1], P + T, x.shape[3])
                    out_buf = buf[: B * shape[1] * shape[2] * shape[3]].view(shape)
                    dst.append(torch.index_select(x[:, :, : P + T], 0, idx, out=out_buf))
            kwargs[kw] = prefilled_cache(keys, values, P)
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=pos.to(device), use_cache=P > 0, logits_to_keep=keep.to(device),
                    **kwargs)
        for i, p in zip(rows, _row_probs(res.logits, row_reads, [tails[i].ids for i in rows],
                                         reader)):
            out[i] = p
        del res, kwargs
        if stats is not None:
            stats.prompts += B
            stats.tokens += sum(ns)
            stats.padded_tokens += B * T
            stats.forwards += 1
    if fallback:
        probs = _naive(model, [tails[i].ids for i in fallback], reader, batch_size, stats,
                       [tails[i].reads for i in fallback])
        for i, p in zip(fallback, probs):
            out[i] = p
        if stats is not None:
            stats.fallback_prompts += len(fallback)
    return out


def packed_reads(model, groups: Sequence[Sequence[Sequence[int]]], safe_id, unsafe_id,
                 batch_size: int, stats: Optional[ScoreStats] = None,
                 reads: Optional[Sequence[Sequence[Sequence[int]]]] = None,
                 max_cache_tokens: Optional[int] = None,
                 transform: Optional[AuthorsTransformConfig] = None) -> list[list[np.ndarray]]:
    """P(safe) at the read positions (default: the last token) of every id sequence of every
    group, reusing the KV states of each group's base (its last sequence). Exact: the same as
    `naive_reads` up to float rounding. `max_cache_tokens` bounds the base tokens whose states
    are held at once (default: ~2 GiB of KV); `transform` as in `naive_reads`."""
    reader = LabelReader.of(safe_id, unsafe_id, transform)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups = [[list(s) for s in g] for g in groups]
    if reads is None:
        reads = [None] * len(groups)
    elif len(reads) != len(groups):
        raise ValueError(f"{len(reads)} read groups for {len(groups)} groups")
    greads = [check_reads(g, r) for g, r in zip(groups, reads)]
    results: list[list] = [[None] * len(g) for g in groups]
    live = [i for i, g in enumerate(groups) if g]
    if not live:
        return results
    if max_cache_tokens is None:
        max_cache_tokens = max(1, DEFAULT_CACHE_BYTES // kv_bytes_per_token(model))
    # Windows of responses whose base states fit the budget; bases sorted by length so the base
    # batches pad little. Tails batch across all responses of a window.
    live.sort(key=lambda i: -len(groups[i][-1]))
    # (The store holds every base of a window at the window's longest length: the first.)
    windows, cur = [], []
    for i in live:
        if cur and (len(cur) + 1) * len(groups[cur[0]][-1]) > max_cache_tokens:
            windows.append(cur)
            cur = []
        cur.append(i)
    windows.append(cur)

    with torch.inference_mode():
        for win in windows:
            tails: list[_Tail] = []
            for gi in win:
                base = groups[gi][-1]
                for k, ids in enumerate(groups[gi][:-1]):
                    # Every read position is recomputed (its logits are the ones wanted).
                    r = greads[gi][k]
                    L = min(common_prefix_len(ids, base), min(r))
                    tails.append(_Tail(gi, k, ids, r, L))
            # Room in the base store for any chunk: longest reuse + longest tail.
            keep_len = max([t.L for t in tails] + [0]) + max(
                [len(t.ids) - t.L for t in tails] + [1])
            base_p, store = _run_bases(model, [groups[i][-1] for i in win],
                                       [greads[i][-1] for i in win], reader, batch_size,
                                       keep_len, stats)
            for j, gi in enumerate(win):
                results[gi][-1] = base_p[j]
            base_row = {gi: j for j, gi in enumerate(win)}
            probs = _run_tails(model, tails, base_row, store, batch_size, reader, stats)
            for t, p in zip(tails, probs):
                results[t.group][t.index] = p
            del store
    return results


def score_packed(model, tokenizer, groups: Sequence[Sequence[str]], safe_id: int, unsafe_id: int,
                 batch_size: int, stats: Optional[ScoreStats] = None,
                 max_cache_tokens: Optional[int] = None,
                 transform: Optional[AuthorsTransformConfig] = None) -> list[np.ndarray]:
    """P(safe) of every prefix prompt, sharing the work of each response's common prefix.

    groups[i] = the prefix prompt texts of response i (shortest first; the last is the full
    response and is the base whose KV states the others reuse). Exact: equal to `score_naive`
    over the same texts up to float rounding."""
    flat = [t for g in groups for t in g]
    ids = tokenize(tokenizer, flat)
    id_groups, at = [], 0
    for g in groups:
        id_groups.append(ids[at : at + len(g)])
        at += len(g)
    probs = packed_reads(model, id_groups, safe_id, unsafe_id, batch_size, stats,
                         max_cache_tokens=max_cache_tokens, transform=transform)
    return [np.asarray([p[-1] for p in g], dtype=np.float64) for g in probs]


__all__ = ["ScoreStats", "common_prefix_len", "naive_reads", "naive_token_count",
           "packed_reads", "packed_token_count", "score_naive", "score_packed", "tokenize"]
