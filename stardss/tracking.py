"""Experiment tracking: an optional Weights & Biases run per process role, with secrets redacted.

The driver (guardrail-pool metrics) and Ray Train rank 0 (training metrics) each open their own
run under one W&B group. The job config logged with a run is passed through `redact` first,
because W&B writes it in plain text to the run's debug.log and .wandb file before any upload
could be stopped, and job configs carry `ray.runtime_env.env_vars` full of API keys.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config.fields import check_choice
from .config.schema import WandbConfig

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

SECRET_MARK = "***redacted***"

# Key rule. A key is split into lowercase word parts at "_", "-", ".", spaces and camelCase
# boundaries ("HFToken" -> hf, token). It is secret when
#   * any part is a word that never names a non-secret (ALWAYS_SECRET), or
#   * its LAST part is "key" or "token" (API_KEY, hf_token, aws_secret_access_key).
# "key"/"token" elsewhere describe something else (token_limit, key_path), and whole words are
# compared, so tokenizer, tokens and max_new_tokens are kept. Cost: column-name keys such as
# prompt_key are redacted too, which loses a label but never leaks anything.
ALWAYS_SECRET = {
    "secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials",
    "auth", "authorization", "cookie", "cookies", "apikey",
}
SECRET_IF_LAST = {"key", "token"}

# A git commit id is 40 hex digits, exactly like a W&B API key; pinned revisions are worth
# keeping, so under these keys the 40-hex rule is skipped (the other value rules still apply).
_HASH_KEYS = {"revision", "commit", "sha", "hash", "digest", "checksum"}

_HEX40 = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
# Credentials recognisable by shape, wherever they sit in a string. Groups keep the harmless
# prefix ("Bearer ", "://user:") so the redacted text still says what was there.
_VALUE_PATTERNS = [
    re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}"),  # Hugging Face
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),  # AWS access key id
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic style
    re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}"),  # HTTP auth header
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(?=@)"),  # password in scheme://user:pass@host
]


def _key_parts(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    key = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", key)
    return [p for p in re.split(r"[^A-Za-z0-9]+", key.lower()) if p]


def _secret_key(key: Any) -> bool:
    parts = _key_parts(str(key))
    return bool(parts) and (parts[-1] in SECRET_IF_LAST or not ALWAYS_SECRET.isdisjoint(parts))


def _redact_str(text: str, allow_hex40: bool = False) -> str:
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + SECRET_MARK, text)
    return text if allow_hex40 else _HEX40.sub(SECRET_MARK, text)


def redact(obj: Any, _key: Any = None) -> Any:
    """A redacted copy of a nested dict/list structure; the input is not modified.

    Values under a secret key (see the key rule above) become SECRET_MARK whatever their type;
    in every other string, credentials recognisable by shape (hf_ tokens, 40-hex W&B keys,
    AWS key ids, sk- keys, Bearer headers, URL passwords) are replaced where they occur.
    """
    if isinstance(obj, Mapping):
        return {k: SECRET_MARK if _secret_key(k) else redact(v, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, _key) for v in obj]
    if isinstance(obj, str):
        parts = _key_parts(str(_key)) if _key is not None else []
        return _redact_str(obj, allow_hex40=bool(parts) and parts[-1] in _HASH_KEYS)
    return obj


def _plain(obj: Any) -> Any:
    """Dataclass / OmegaConf node / mapping -> plain dict (what W&B logs)."""
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return dict(obj)


def _scalar(value: Any) -> Any:
    # numpy scalars and 0-d tensors become Python numbers; NaN/inf pass through as W&B keeps them.
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


class Tracker:
    """One tracking run. Without a W&B run every method is a no-op, so callers never branch."""

    def __init__(self, run: Any = None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log({k: _scalar(v) for k, v in metrics.items()}, step=step)

    def histogram(self, name: str, values, step: int | None = None) -> None:
        """A distribution (e.g. the STAR weights of a step's tokens) as a W&B histogram."""
        if self.run is not None and len(values):
            import wandb

            self.run.log({name: wandb.Histogram(values)}, step=step)

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        """A W&B table (e.g. generated samples with their judges' verdicts), values redacted."""
        if self.run is not None and rows:
            import wandb

            data = [[_scalar(v) if not isinstance(v, str) else _redact_str(v) for v in r]
                    for r in rows]
            self.run.log({name: wandb.Table(columns=list(columns), data=data)})

    def summary(self, metrics: dict) -> None:
        """Record the final numbers of the run (a flat dict)."""
        if self.run is not None:
            self.run.summary.update({k: _scalar(v) for k, v in metrics.items()})

    def finish(self, exit_code: int | None = None) -> None:
        # cleared first: a second call or a failing finish is a no-op
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception:  # the metrics are already on disk; a tracking hiccup must not fail a job
            log.warning("W&B run did not finish cleanly", exc_info=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)


def open_tracker(cfg: Any, *, job: Any, group: str, role: str, out_dir: str) -> Tracker:
    """Open the tracking run of one process role (`driver`, `train`, ...) of a job.

    `cfg` is the job's `tracking.wandb` (WandbConfig, its OmegaConf node, a plain dict, or None
    for no tracking); `job` is the whole job as a record (a dict, or the config itself), logged
    redacted. Runs are written under `<dir>/wandb/` where dir = cfg.dir or out_dir, so by
    default they land in `<out_dir>/wandb/` (W&B always appends its own `wandb/` to `dir`).
    """
    if cfg is None:
        return Tracker()
    cfg = _plain(cfg)
    mode = cfg.get("mode") or "offline"
    check_choice(WandbConfig, "mode", mode, "tracking.wandb.mode")
    # wandb.init's mode argument beats the environment, so W&B's usual kill switch
    # WANDB_MODE=disabled (set by tests/conftest.py) would be ignored unless honoured here.
    if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return Tracker()

    import wandb  # only here: disabled tracking must work (and stay fast) without wandb

    root = cfg.get("dir") or out_dir
    os.makedirs(root, exist_ok=True)
    settings = wandb.Settings(
        # create_new: each Tracker owns its run, so a driver run still open in this process is
        # neither returned to nor finished by the train role's init.
        reinit="create_new",
        # Bounded waits: the default finish blocks until an online upload completes, forever.
        init_timeout=120.0,
        finish_timeout=300.0,
        # No console capture: "auto" redirects stdout/stderr file descriptors, which fights Ray's
        # own log capture in workers; silent keeps W&B's banner lines out of the Ray logs.
        console="off",
        silent=True,
    )
    run = wandb.init(
        project=cfg.get("project") or "stardss",
        entity=cfg.get("entity"),
        mode=mode,
        dir=root,
        group=group,
        name=f"{group}-{role}",
        job_type=role,
        tags=list(cfg.get("tags") or []) or None,
        config=redact(_plain(job)),
        settings=settings,
    )
    return Tracker(run)
