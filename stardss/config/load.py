"""Load a job: YAML file + dotlist overrides merged onto the schema, then validated."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import JobConfig
from .validate import ConfigError, validate


def load_job(path: Optional[str | os.PathLike], overrides: Iterable[str] = ()) -> JobConfig:
    """Return the validated job config (a typed DictConfig that behaves like JobConfig)."""
    overrides = list(overrides)
    try:
        cfg = OmegaConf.structured(JobConfig)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"job file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides:
            _apply_override(cfg, item)
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        # OmegaConf names the full key in its message; keep that and drop the traceback noise.
        raise ConfigError(_first_line(err)) from None
    if missing:
        raise ConfigError(f"required key(s) not set: {', '.join(missing)}")
    validate(cfg)
    return cfg  # type: ignore[return-value]


def _apply_override(cfg: DictConfig, item: str) -> None:
    """One `key=value`; keys may index lists (`guardrails.0.bias=1` or `guardrails[0].bias=1`)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value")
    # Parse the value with OmegaConf's own dotlist grammar (numbers, lists, null, quotes).
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
    if not _settable(cfg, key):
        raise ConfigError(f"{key}: no such key")
    OmegaConf.update(cfg, key, parsed, merge=True)


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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = lines[0] if lines else type(err).__name__
    key = getattr(err, "full_key", None)
    if key and key not in head:
        head = f"{key}: {head}"
    return head
