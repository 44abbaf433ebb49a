"""The trainee's tokenizer, loaded the real way (Hub id or folder) with its chat template, and
the check that a model / tokenizer reference can be loaded at all, made before any work starts.

(No tokenizer can be downloaded on an offline machine: the demo and the tests train their own,
`stardss.demo.tokenizer`, and load it through this same `AutoTokenizer` path.)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config.fields import ConfigError
from ..errors import ModelNotFound
from ..hashing import hash_fields

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


def is_repo_id(name: str) -> bool:
    """A well-formed Hugging Face repo id ("name" or "owner/name"), as huggingface_hub takes."""
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name \
        and not name.endswith((".", "-"))


MODEL_FILES = ("config.json", "adapter_config.json")
"""A model folder holds one of these (a model, or a LoRA adapter over its base)."""
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


@dataclass(frozen=True)
class ModelLocation:
    """Where a model / tokenizer reference points, found before anything is loaded."""

    found: bool
    detail: str
    """What was found ("folder X", "Hub id X in the local cache (...)"), or exactly what is
    missing and what to do about it."""
    downloads: bool = False
    """A well-formed Hub id, not cached, online: a run would download it (found, unchecked)."""


def locate_model(key: str, name: str, revision: Optional[str],
                 files: tuple[str, ...] = MODEL_FILES) -> ModelLocation:
    """The one answer to "does this model reference resolve?": a folder holding one of
    `files`, or a Hub id with one of them in the local Hugging Face cache, or (online) any
    well-formed Hub id. Reads no weights and opens no connection. `key` names the config key
    in the advice of a miss."""
    path = Path(name).expanduser()
    wanted = " or ".join(files)
    if path.is_dir():
        if any((path / f).is_file() for f in files):
            return ModelLocation(True, f"folder {name}")
        return ModelLocation(False, f"folder {name} has no {wanted}: not a Hugging Face "
                                    f"model folder")
    if path.exists():
        return ModelLocation(False, f"{name} is a file, not a model folder or Hub id")
    if not is_repo_id(name):
        return ModelLocation(False, f"no such folder: {name} (and not a Hub id)")
    from huggingface_hub import constants, try_to_load_from_cache

    at = f"{name}@{revision}" if revision else name
    # Any of `files` cached counts (an adapter repo has no config.json; the run's check before
    # the merge accepted any of them too).
    cached = next((c for c in (try_to_load_from_cache(name, f, revision=revision)
                               for f in files) if isinstance(c, str)), None)
    if cached is not None:
        return ModelLocation(True, f"Hub id {at} in the local cache ({Path(cached).parent})")
    missing = (f"no such folder: {name}, and Hub id {at} is not in the local Hugging Face "
               f"cache ({files[0]} missing under {constants.HF_HUB_CACHE})")
    if hub_offline():
        return ModelLocation(False, f"{missing}; offline (HF_HUB_OFFLINE=1): download it where "
                                    f"there is network (`huggingface-cli download {name}`) or "
                                    f"point {key} at a folder")
    return ModelLocation(True, missing, downloads=True)


def check_model_ref(name_or_path: str, key: str = "model.name_or_path",
                    revision: Optional[str] = None, *, tokenizer: bool = False) -> None:
    """Raise ModelNotFound naming `key` unless `name_or_path` resolves (`locate_model`), so a
    typo fails in a second instead of after the data is read and Ray has started."""
    loc = locate_model(key, name_or_path, revision, TOKENIZER_FILES if tokenizer else
                       MODEL_FILES)
    if not loc.found:
        raise ModelNotFound(f"{key}: {loc.detail}")


def tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of what `tokens` cuts depend on: the trainee tokenizer's full definition
    (vocab, merges, normalizer, pre-tokenizer, added tokens) and its chat template (the response
    is tokenised as the template renders it). For a slow tokenizer without a serialisable
    backend, falls back to its class, name_or_path and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        vocab = tokenizer.get_vocab()
        body = "|".join([type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
                         *(f"{t}={i}" for t, i in sorted(vocab.items()))])
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = repr(template)
    return "tok-sha256:" + hash_fields(body, template)[:32]


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
