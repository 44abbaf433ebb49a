"""Token-id rows of guard scoring, kept apart from the forward passes in packed.py: exact
tokenisation of guard prompts, common prefixes, right-padded batches with explicit positions,
the read positions of a row and their `logits_to_keep` index, and the token accounting
(`ScoreStats`, and what naive / packed scoring run through the model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass
class ScoreStats:
    """What a scoring call ran through the model (accumulated over calls)."""

    prompts: int = 0
    """Prefix prompts scored."""
    tokens: int = 0
    """Real (unpadded) tokens processed: naive = sum of prompt lengths; packed = base lengths +
    sum of tail lengths (len(ids_k) - L_k)."""
    padded_tokens: int = 0
    """Query slots processed including padding (batch rows x padded length)."""
    forwards: int = 0
    """Forward passes."""
    fallback_prompts: int = 0
    """Packed mode: prefixes scored naively (sliding-window models whose chunk would exceed the
    window)."""

    def as_dict(self) -> dict:
        return dict(prompts=self.prompts, tokens=self.tokens, padded_tokens=self.padded_tokens,
                    forwards=self.forwards, fallback_prompts=self.fallback_prompts)


# ---------------------------------------------------------------------------------------------
# helpers


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Exact ids of full guard-prompt texts: special tokens are in the text, none are added."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for text, row in zip(texts, ids):
        if not row:
            raise ValueError(f"guard prompt tokenises to nothing: {text[:80]!r}")
    return [list(r) for r in ids]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    x = np.asarray(a[:m], dtype=np.int64)
    y = np.asarray(b[:m], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else m


# ---------------------------------------------------------------------------------------------
# Rows: one id sequence and the token positions whose next-token logits are read (default: the
# last). Reading several positions of one sequence serves teacher-forced multi-step verdicts.

Reads = Optional[Sequence[Sequence[int]]]


def right_padded(seqs: Sequence[Sequence[int]], pad: int):
    """(ids, attention mask, position ids) of right-padded rows: positions count from 0 in
    every row, so padding never shifts a real token's rotary position."""
    T = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, : len(q)] = torch.tensor(q, dtype=torch.long)
        mask[r, : len(q)] = 1
    pos = torch.arange(T, dtype=torch.long).unsqueeze(0).expand(len(seqs), T)
    return ids, mask, pos


def check_reads(seqs: Sequence[Sequence[int]], reads: Reads) -> list[list[int]]:
    if reads is None:
        return [[len(s) - 1] for s in seqs]
    if len(reads) != len(seqs):
        raise ValueError(f"{len(reads)} read lists for {len(seqs)} sequences")
    out = []
    for s, r in zip(seqs, reads):
        r = [int(x) for x in r]
        if not r or any(x < 0 or x >= len(s) for x in r):
            raise ValueError(f"read positions {r} outside a sequence of {len(s)} tokens")
        out.append(r)
    return out


def keep_index(reads: list[list[int]], offsets: Sequence[int]) -> torch.Tensor:
    """logits_to_keep [B, R]: each row's read positions shifted by -offset, padded by repetition."""
    R = max(len(r) for r in reads)
    keep = torch.empty((len(reads), R), dtype=torch.long)
    for b, (r, off) in enumerate(zip(reads, offsets)):
        row = [x - off for x in r]
        keep[b] = torch.tensor(row + [row[-1]] * (R - len(row)), dtype=torch.long)
    return keep


def naive_token_count(tokenizer, texts: Sequence[str]) -> int:
    """Tokens naive scoring runs through the model (without padding)."""
    return sum(len(r) for r in tokenize(tokenizer, texts))


def packed_token_count(groups_ids: Sequence[Sequence[Sequence[int]]]) -> int:
    """Tokens packed scoring runs through the model (without padding): base lengths + tails."""
    total = 0
    for g in groups_ids:
        if not g:
            continue
        base = g[-1]
        total += len(base)
        for ids in g[:-1]:
            total += len(ids) - min(common_prefix_len(ids, base), len(ids) - 1)
    return total


__all__ = ["Reads", "ScoreStats", "check_reads", "common_prefix_len", "keep_index",
           "naive_token_count", "packed_token_count", "right_padded", "tokenize"]
