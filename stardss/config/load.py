"""Load a job: YAML file + dotlist overrides merged onto the schema, then validated."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from omegaconf import DictConfig, OmegaConf
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
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:
        # OmegaConf names the full key in its message; keep that and drop the traceback noise.
        raise ConfigError(_first_line(err)) from None
    if missing:
        raise ConfigError(f"required key(s) not set: {', '.join(missing)}")
    validate(cfg)
    return cfg  # type: ignore[return-value]


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
