"""Combine the rows of several sources into one training mixture, by ratio or whole.

Every choice is seeded per source (by seed and source name), so adding a source or changing
another source's ratio does not change which rows of this source are picked.
"""
from __future__ import annotations

import random
from fractions import Fraction

from .rows import ChatRow


def allocate(weights: dict[str, Fraction], total: int) -> dict[str, int]:
    """Split `total` in proportion to `weights` by largest remainder, so the counts sum to
    `total` exactly; ties go to the source listed first."""
    weight_sum = sum(weights.values())
    quotas = {name: w * total / weight_sum for name, w in weights.items()}
    counts = {name: int(q) for name, q in quotas.items()}  # floor: quotas are >= 0
    order = sorted(quotas, key=lambda n: quotas[n] - counts[n], reverse=True)  # stable
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def largest_size(weights: dict[str, Fraction], available: dict[str, int]) -> int:
    """The largest mixture size for which no source is allocated more rows than it has."""
    weight_sum = sum(weights.values())
    shares = {n: w / weight_sum for n, w in weights.items() if w}
    # Any feasible N has floor(share * N) <= available, i.e. N < (available + 1) / share;
    # every N <= available / share is feasible. Search the gap between the two from the top
    # (largest-remainder counts are not monotone in N, so bisection would be wrong).
    low = min(int(available[n] / s) for n, s in shares.items())
    high = min(int((available[n] + 1) / s) for n, s in shares.items())
    for size in range(min(high, sum(available.values())), low, -1):
        if all(c <= available[n] for n, c in allocate(weights, size).items()):
            return size
    return low


def _pick(rows: list[ChatRow], count: int, rng: random.Random) -> tuple[list[ChatRow], int]:
    """`count` rows: a sample without replacement, or every row repeated as evenly as
    possible when `count` exceeds them. Returns (rows in file order, number of repeats)."""
    if count == 0:
        return [], 0
    whole, rest = divmod(count, len(rows))
    picked = sorted(rng.sample(range(len(rows)), rest))
    if whole:
        picked = sorted(list(range(len(rows))) * whole + picked)
    return [rows[i] for i in picked], max(0, count - len(rows))


def mix(rows_by_source: dict[str, list[ChatRow]], ratios: dict[str, float] | None,
        mix_size: int | None, seed: int, shuffle: bool = True) -> tuple[list[ChatRow], dict]:
    """Returns (mixture, summary); summary = {source: {"available", "used", "repeated",
    "unused"}, ..., "total": len(mixture)} where used + unused == available and the source's
    share of the mixture is used + repeated.

    ratios None and mix_size None: every row once. ratios None with a mix_size: a uniform
    sample of that size (ratios proportional to source sizes).
    """
    if "total" in rows_by_source:
        raise ValueError("a data source may not be named 'total' (a key of the summary)")
    if ratios is None and mix_size is not None:
        ratios = {name: len(rows) for name, rows in rows_by_source.items()}
    if ratios is None:
        counts = {name: len(rows) for name, rows in rows_by_source.items()}
    else:
        if set(ratios) != set(rows_by_source):
            raise ValueError(f"mixture ratios are for sources {sorted(ratios)}, but the rows "
                             f"are from {sorted(rows_by_source)}")
        weights = {name: Fraction(ratios[name]) for name in rows_by_source}  # source order
        if any(w < 0 for w in weights.values()) or not sum(weights.values()):
            raise ValueError(f"mixture ratios must be >= 0 and not all 0, got {ratios}")
        available = {name: len(rows) for name, rows in rows_by_source.items()}
        for name, w in weights.items():
            if w and not available[name]:
                raise ValueError(f"data source {name!r} has ratio {ratios[name]} but no rows")
        size = mix_size if mix_size is not None else largest_size(weights, available)
        counts = allocate(weights, size)

    return take(rows_by_source, counts, seed, shuffle)


def take(rows_by_source: dict[str, list[ChatRow]], counts: dict[str, int], seed: int,
         shuffle: bool = True) -> tuple[list[ChatRow], dict]:
    """`counts[name]` rows of each source (a seeded sample, or every row repeated as evenly as
    possible past its size), in source order or shuffled; the summary is mix()'s. For callers
    that decide the counts themselves (the data builders' harm-ratio mixtures)."""
    mixture: list[ChatRow] = []
    summary: dict = {}
    for name, rows in rows_by_source.items():
        if counts[name] and not rows:
            raise ValueError(f"data source {name!r} is to give {counts[name]} rows but has none")
        picked, repeated = _pick(rows, counts[name], random.Random(f"{seed}:mix:{name}"))
        mixture += picked
        used = len(picked) - repeated
        summary[name] = {"available": len(rows), "used": used, "repeated": repeated,
                         "unused": len(rows) - used}
    if shuffle:
        random.Random(f"{seed}:shuffle").shuffle(mixture)
    summary["total"] = len(mixture)
    return mixture, summary
