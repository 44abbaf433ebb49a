"""Load a job: YAML file + dotlist overrides merged onto the schema, then validated.

A job file may start from other files: `defaults: [parts/base.yaml, ...]` (paths relative to
the file) are read in order, each merged over the ones before, and the file's own keys over
them all; a part may have defaults of its own. Mappings merge key by key, lists (e.g.
`data.sources`, `guardrails`) are replaced whole, as with overrides.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import JobConfig
from .validate import ConfigError, validate

Job = TypeVar("Job", bound=JobConfig)


def load_job(path: Optional[str | os.PathLike], overrides: Iterable[str] = (),
             schema: type[Job] = JobConfig) -> Job:
    """The validated job: the YAML (with its defaults) and the overrides merged onto `schema`
    (JobConfig, or a subclass with sections of its own), as real dataclasses."""
    overrides = list(overrides)
    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            cfg = OmegaConf.merge(cfg, read_with_defaults(Path(path)))
        for item in overrides:
            apply_override(cfg, item)
    except OmegaConfBaseException as err:
        # OmegaConf names the full key in its message; keep that and drop the traceback noise.
        raise ConfigError(first_line(err)) from None
    return _typed(cfg)


def derive(job: Job, changes: Mapping[str, Any]) -> Job:
    """A new validated job: `job` with `changes` ({dotted key: value}, values as Python objects,
    e.g. {"loss.kind": "sft", "data.sources": [SourceConfig(...)]}) applied; `job` is left as
    it is. Interpolations were resolved when `job` was loaded: a changed `out_dir` does not
    move the paths derived from it."""
    try:
        cfg = OmegaConf.structured(job)
        for key, value in changes.items():
            if not _settable(cfg, key):
                raise ConfigError(f"{key}: no such key")
            OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as err:
        raise ConfigError(first_line(err)) from None
    return _typed(cfg)


def to_object(cfg: DictConfig):
    """The dataclass object of a structured config: interpolations resolved, every required
    key set, an OmegaConf error as one ConfigError line (no validation beyond the types)."""
    try:
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"required key(s) not set: {', '.join(missing)}")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(first_line(err)) from None


def _typed(cfg: DictConfig):
    job = to_object(cfg)
    validate(job)
    return job


DEFAULTS = "defaults"


def read_with_defaults(path: Path, including: tuple[Path, ...] = ()) -> DictConfig:
    """The YAML of `path` merged over the files its `defaults` list names (untyped: the schema
    checks the result as a whole)."""
    if not path.is_file():
        where = f" (in the defaults of {including[-1]})" if including else ""
        raise ConfigError(f"job file not found: {path}{where}")
    if path.resolve() in including:
        chain = " -> ".join(str(p) for p in (*including, path.resolve()))
        raise ConfigError(f"{DEFAULTS}: {path} includes itself ({chain})")
    own = _load_yaml(path)
    parts = own.pop(DEFAULTS, [])
    if not isinstance(parts, (list, ListConfig)) or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"{DEFAULTS}: in {path}, a list of YAML paths relative to it, "
                          f"got {parts!r}")
    merged = OmegaConf.create()
    for part in parts:
        merged = OmegaConf.merge(merged, read_with_defaults(path.parent / part,
                                                            (*including, path.resolve())))
    return OmegaConf.merge(merged, own)


def apply_override(cfg: DictConfig, item: str) -> None:
    """One `key=value`; keys may index lists (`guardrails.0.bias=1` or `guardrails[0].bias=1`)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value")
    # Parse the value with OmegaConf's own dotlist grammar (numbers, lists, null, quotes).
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
    if not _settable(cfg, key):
        raise ConfigError(f"{key}: no such key")
    OmegaConf.update(cfg, key, parsed, merge=True)


def _load_yaml(path: Path) -> DictConfig:
    """The mapping a job file holds. Checked with PyYAML first: OmegaConf reads a scalar
    document as {text: None} and raises OSError / UnicodeDecodeError for others, none of which
    names the file."""
    import yaml

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start})") from None
    try:  # OmegaConf's own loader also refuses duplicate keys
        doc = yaml.safe_load(text)
        if doc is not None and not isinstance(doc, dict):
            kind = "a list" if isinstance(doc, list) else f"the {type(doc).__name__} {doc!r}"
            raise ConfigError(f"{path}: a job file is a mapping of sections, not {kind[:60]}")
        return OmegaConf.create(text) if doc is not None else OmegaConf.create()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {what}") from None


def _settable(cfg: DictConfig, key: str) -> bool:
    """The key exists, or lies under a free-form mapping (e.g. `ray.address`,
    `ray.runtime_env.env_vars.HF_HOME`), where any key is the user's to add."""
    node = cfg
    for part in key.replace("[", ".").replace("]", "").split("."):
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig):
            if part not in node.keys():  # `in` is False for ??? values
                return node._metadata.object_type in (None, dict)  # not a dataclass
            node = node._get_node(part)
        else:
            return False
    return True


def to_dict(job) -> dict:
    """The job as plain data (what W&B, summaries and checkpoint folders record)."""
    return dataclasses.asdict(job)


def to_yaml(job) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(job)))


def first_line(err: Exception) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = lines[0] if lines else type(err).__name__
    key = getattr(err, "full_key", None)
    if key and key not in head:
        head = f"{key}: {head}"
    return head
