"""The `build` section: data files that `stardss build-data` makes from the user's own files
(the paper's attacks and mixtures, stardss/data/attacks.py), and the loader of a build spec.

A spec is a YAML file with a `build` section (and optionally `seed`), or a job file carrying one:
only `seed` and `build` are read from it, so the rest of a job file is left to the commands that
use it. Every value is checked before any file is read: choices and bounds on the fields
(fields.py), and what one field alone cannot say (`validate_build`), each error naming its key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .fields import ConfigError, bounded, check_fields, choice
from .load import apply_override, first_line, read_with_defaults, to_object
from .sources import ROW_FIELDS, SourceConfig

OUTPUT_KINDS = ("mixture", "suffix", "prefix", "trigger", "subset")
PRESETS = {"sfx1": "suffix", "sfx2": "suffix", "sfx3": "suffix", "pfx1": "prefix",
           "poison": "trigger"}
"""Preset texts by name (the authors' file names in star-dss/data/pure_bad/) and the kind each
belongs to; the texts are in stardss/data/attacks.py."""


@dataclass
class BuildOutputConfig:
    """One file to build. Which fields apply depends on `kind` (FIELDS_OF_KIND)."""

    kind: str = choice("???", OUTPUT_KINDS)
    """mixture: benign + harmful (+ safe) rows at the given ratios. suffix: a text appended to
    every response. prefix: a text put before every response. trigger: a backdoor trigger
    appended to every prompt (training rows, or eval prompts with prompts_only). subset: a
    seeded sample of `size` rows of `source` (e.g. HH-RLHF harmful subsets)."""
    path: str = "???"
    """The JSONL file written (its folder is created)."""
    source: Optional[SourceConfig] = None
    """suffix, prefix, trigger, subset: the rows transformed or sampled."""
    preset: Optional[str] = choice(None, tuple(PRESETS))
    """suffix: sfx1 | sfx2 | sfx3; prefix: pfx1; trigger: poison (the authors' texts). Give
    either a preset or `text`."""
    text: Optional[str] = None
    """suffix, prefix, trigger: your own text instead of a preset."""
    separator: str = "\n"
    """suffix, prefix: what joins the text and the response (the authors' files: a newline).
    A trigger is appended as it is (the `poison` preset starts with its space)."""
    prompts_only: bool = False
    """trigger: the source is prompts without responses (an eval set's prompts); writes
    prompt-only rows."""
    benign: Optional[SourceConfig] = None
    """mixture: the benign task rows (e.g. GSM8K train)."""
    harmful: Optional[SourceConfig] = None
    """mixture: the harmful rows (e.g. PureBad-100, or a suffix/trigger file built above)."""
    safe: Optional[SourceConfig] = None
    """mixture: safety (refusal) examples mixed in at `safe_ratio`."""
    harm_ratio: Optional[float] = bounded(None, at_least=0, at_most=1)
    """mixture: the harmful share of the rows, 0 to 1."""
    safe_ratio: float = bounded(0.0, at_least=0, at_most=1)
    """mixture: the safe share of the rows; harm_ratio + safe_ratio <= 1, the rest benign."""
    size: Optional[int] = bounded(None, at_least=1)
    """mixture: total rows; null = every benign row once plus the harmful and safe shares of
    the total (GSM8K's 7473 at harm_ratio 0.1: 830 harmful, 8303 in all). A share larger than
    its source repeats rows as evenly as possible (counted in the summary). subset: rows
    sampled; null = every row."""
    transcript: Optional[str] = None
    """subset: a column holding a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript (HH-RLHF's
    `chosen` / `rejected`), read as the conversation instead of prompt/response columns."""
    keep: List[str] = field(default_factory=list)
    """Input columns copied to the output rows as they are (e.g. [category] of eval prompts)."""
    shuffle: Optional[bool] = None
    """Shuffle the rows with the seed; null = yes for mixture and subset, no for the
    transforms (row i of the output is row i of the source, as in the authors' files)."""


FIELDS_OF_KIND = {
    "mixture": ("benign", "harmful", "safe", "harm_ratio", "safe_ratio", "size"),
    "suffix": ("source", "preset", "text", "separator"),
    "prefix": ("source", "preset", "text", "separator"),
    "trigger": ("source", "preset", "text", "prompts_only"),
    "subset": ("source", "size", "transcript"),
}
"""The kind-specific fields each kind reads; setting one another kind reads is an error."""
_DEFAULTS = BuildOutputConfig()


@dataclass
class BuildConfig:
    outputs: List[BuildOutputConfig] = field(default_factory=list)
    """The files to build, in order: an output may read a file an earlier one wrote."""


@dataclass
class BuildSpec:
    """What `stardss build-data` reads of a spec or job file."""

    seed: int = 42
    """Seeds every sample and shuffle (the job's seed when the spec is a job file)."""
    build: BuildConfig = field(default_factory=BuildConfig)


def load_build(path: str | os.PathLike, overrides: Iterable[str] = ()) -> BuildSpec:
    """The validated build spec of `path` (its `defaults` included) with dotlist overrides
    (`build.outputs.0.harm_ratio=0.3`, `seed=1`)."""
    raw = read_with_defaults(Path(path))
    if "build" not in raw:
        raise ConfigError(f"build: {path} has no `build` section (outputs to build)")
    _check_outputs_shape(raw.get("build"))
    try:
        cfg = OmegaConf.structured(BuildSpec)
        cfg = OmegaConf.merge(cfg, {k: raw[k] for k in ("seed", "build") if k in raw})
        for item in overrides:
            apply_override(cfg, item)
    except OmegaConfBaseException as err:
        raise ConfigError(first_line(err)) from None
    spec = to_object(cfg)
    check_fields(spec)
    validate_build(spec)
    return spec


def _check_outputs_shape(build) -> None:
    """Each output merged on its own first: OmegaConf's message for an unknown key in a list
    entry names neither the list nor the index ("Key 'colour' not in 'BuildOutputConfig'")."""
    outputs = build.get("outputs") if isinstance(build, DictConfig) else None
    if not isinstance(outputs, ListConfig):
        return  # not a list: the whole merge below names the key
    for i, out in enumerate(outputs):
        try:
            OmegaConf.merge(OmegaConf.structured(BuildOutputConfig), out)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None)
            where = f"build.outputs[{i}]" + (f".{key}" if key else "")
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def validate_build(spec: BuildSpec) -> None:
    """What the fields alone cannot say, naming the key (build.outputs[i].<field>)."""
    outputs = spec.build.outputs
    if not outputs:
        raise ConfigError("build.outputs: nothing to build (an empty list)")
    written: dict[str, int] = {}
    for i, out in enumerate(outputs):
        key = f"build.outputs[{i}]"
        _check_fields_of_kind(out, key)
        target = os.path.normpath(out.path)
        if target in written:
            raise ConfigError(f"{key}.path: {out.path} is also written by "
                              f"build.outputs[{written[target]}]")
        written[target] = i
        for name in ("source", "benign", "harmful", "safe"):
            src = getattr(out, name)
            if src is not None and os.path.normpath(src.path) == target:
                raise ConfigError(f"{key}.path: {out.path} is also this output's {name} "
                                  "(it would be overwritten while it is read)")
        for j, column in enumerate(out.keep):
            if column in (*ROW_FIELDS, "attack", "source_row"):
                raise ConfigError(f"{key}.keep[{j}]: {column!r} is a column the builder writes "
                                  "itself")
        if out.kind == "mixture":
            _check_mixture(out, key)
        elif out.kind == "subset":
            if out.source is None:
                raise ConfigError(f"{key}.source: a subset needs the source to sample")
        else:
            _check_transform(out, key)


def _check_fields_of_kind(out: BuildOutputConfig, key: str) -> None:
    own = FIELDS_OF_KIND[out.kind]
    for name in sorted({f for fs in FIELDS_OF_KIND.values() for f in fs} - set(own)):
        if getattr(out, name) != getattr(_DEFAULTS, name):
            kinds = [k for k, fs in FIELDS_OF_KIND.items() if name in fs]
            raise ConfigError(f"{key}.{name}: not used by kind {out.kind} (only by "
                              f"{', '.join(kinds)})")


def _check_mixture(out: BuildOutputConfig, key: str) -> None:
    if out.harm_ratio is None:
        raise ConfigError(f"{key}.harm_ratio: a mixture needs its harmful share (0 to 1)")
    benign_share = 1 - out.harm_ratio - out.safe_ratio
    if benign_share < -1e-12:
        raise ConfigError(f"{key}.safe_ratio: harm_ratio + safe_ratio is "
                          f"{out.harm_ratio + out.safe_ratio:g}, more than 1")
    for name, share in (("benign", benign_share), ("harmful", out.harm_ratio),
                        ("safe", out.safe_ratio)):
        if share > 1e-12 and getattr(out, name) is None:
            raise ConfigError(f"{key}.{name}: the mixture's {name} share is {share:g}, but no "
                              f"{name} source is given")
    if out.size is None and benign_share <= 1e-12:
        raise ConfigError(f"{key}.size: without benign rows the mixture's size must be given "
                          "(null means: every benign row once)")


def _check_transform(out: BuildOutputConfig, key: str) -> None:
    if out.source is None:
        raise ConfigError(f"{key}.source: a {out.kind} attack needs the rows it transforms")
    if (out.preset is None) == (out.text is None):
        presets = [p for p, k in PRESETS.items() if k == out.kind]
        raise ConfigError(f"{key}.text: give a {out.kind} either `preset` "
                          f"({' | '.join(presets)}) or your own `text`, not "
                          f"{'both' if out.preset else 'neither'}")
    if out.preset is not None and PRESETS[out.preset] != out.kind:
        raise ConfigError(f"{key}.preset: {out.preset} is a {PRESETS[out.preset]} text, not a "
                          f"{out.kind} one")
    if out.text is not None and not out.text.strip():
        raise ConfigError(f"{key}.text: empty")
