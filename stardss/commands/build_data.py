"""`stardss build-data SPEC [overrides]`: write the attack and mixture files a spec's `build`
section lists (stardss/data/attacks.py) and return one summary: per output its kind, path, rows,
the file's sha256 and, for mixtures and subsets, what was used of each source. The spec may be
a job file carrying a `build` section; only `seed` and `build` are read from it."""
from __future__ import annotations

from typing import Iterable

from ..config.build import load_build
from ..data.attacks import build


def run_build_data(spec_path: str, overrides: Iterable[str] = ()) -> dict:
    spec = load_build(spec_path, overrides)  # every key checked before any file is read
    return {"seed": spec.seed, "outputs": build(spec)}
