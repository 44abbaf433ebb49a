"""The trainee's tokenizer, loaded the real way (Hub id or folder) with its chat template, and
the check that a model / tokenizer reference can be loaded at all, made before any work starts.

(No tokenizer can be downloaded on an offline machine: the demo and the tests train their own,
`stardss.demo.tokenizer`, and load it through this same `AutoTokenizer` path.)
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..config.fields import ConfigError
from ..errors import ModelNotFound

# What huggingface_hub accepts as a repo id: "name" or "owner/name" (no "..", no "--").
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """No downloads: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE in the environment (read here:
    huggingface_hub freezes its constant at import, and a user may set it for one command)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().lower() in _TRUE
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def _is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name \
        and not name.endswith((".", "-"))


def _cached(repo_id: str, revision: Optional[str], files: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str)
               for f in files)


def check_model_ref(name_or_path: str, key: str = "model.name_or_path",
                    revision: Optional[str] = None, *, tokenizer: bool = False) -> None:
    """Raise ModelNotFound naming `key` unless `name_or_path` is a folder, or a Hub id that
    can be loaded: in the local Hugging Face cache, or anything well-formed when online (the
    download itself is transformers' to try). Reads no weights and opens no connection, so a
    typo fails in a second instead of after the data is read and Ray has started."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelNotFound(f"{key}: {name_or_path!r} is a file, not a model folder")
    if not _is_repo_id(name_or_path):
        raise ModelNotFound(f"{key}: no such folder {name_or_path!r} (and not a Hub id)")
    files = ("tokenizer_config.json", "tokenizer.json") if tokenizer else ("config.json",)
    if hub_offline() and not _cached(name_or_path, revision, files):
        raise ModelNotFound(f"{key}: no such folder {name_or_path!r} (and not a Hub id in the "
                            f"local cache; HF_HUB_OFFLINE is set, so it cannot be downloaded)")


def load_tokenizer(name_or_path: str, revision: Optional[str] = None,
                   chat_template: Optional[str] = None, *, key: str = "model.name_or_path"):
    """AutoTokenizer with a pad token and a chat template, or a clear error naming what is
    missing (`key`: the config key `name_or_path` came from, for the message)."""
    from transformers import AutoTokenizer

    check_model_ref(name_or_path, key, revision, tokenizer=True)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except OSError as err:  # not found on the Hub, no tokenizer files in the folder, offline
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ModelNotFound(f"{key}: cannot load a tokenizer from {name_or_path!r}: "
                            f"{first.strip()}") from err
    if chat_template is not None:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"model.chat_template: the tokenizer {name_or_path!r} has none of "
                          f"its own; set model.chat_template")
    if tok.pad_token is None:
        # Llama 3 ships without one; the pad id is never trained on (masked), any token serves.
        tok.pad_token = tok.eos_token
    return tok
