"""What identifies a guardrail's scores, for the STAR cache: the files of a local model folder
by content, or the commit a Hub id's cached snapshot resolves to, and one hash over all the
parts a guardrail names (format, options, dtype, ...). No torch: a remote guard, which has
only a tokenizer here, uses it too."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json")
DEFINING_FILES = ("config.json", *TOKENIZER_FILES)
"""Files whose content defines what a local model folder computes (shapes, tokenizer)."""


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 22)
            if not block:
                break
            h.update(block)


def weights_fingerprint(name_or_path: str, revision: Optional[str] = None, *,
                        tokenizer_only: bool = False) -> str:
    """What identifies the model's weights: for a local folder, sha256 of the content of its
    weight, config and tokenizer files; for a Hub id, the commit its (cached) snapshot resolves
    to. `tokenizer_only`: the tokenizer's files alone (a guard whose weights are on a server)."""
    path = Path(name_or_path)
    if path.is_dir():
        h = hashlib.sha256()
        if tokenizer_only:
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name in TOKENIZER_FILES)
            if not files:
                raise ValueError(f"guardrail folder {name_or_path!r} holds no tokenizer files")
        else:
            files = sorted(p for p in path.iterdir() if p.is_file() and (
                p.name.endswith(WEIGHT_SUFFIXES) or p.name in DEFINING_FILES))
            if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
                raise ValueError(f"guardrail folder {name_or_path!r} holds no weight files")
        for p in files:
            h.update(p.name.encode() + b"\0")
            _hash_file(h, p)
            h.update(b"\0")
        return "sha256:" + h.hexdigest()
    from transformers.utils.hub import cached_file, extract_commit_hash

    probe = "tokenizer_config.json" if tokenizer_only else "config.json"
    commit = extract_commit_hash(cached_file(name_or_path, probe, revision=revision), None)
    if commit is None:
        raise ValueError(f"cannot resolve the commit of guardrail {name_or_path!r} "
                         f"(revision {revision!r}); download it or pass a local folder")
    return "commit:" + commit


def guard_fingerprint(*parts: object) -> str:
    """One sha256 over the parts' reprs, each ended by a unit separator."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()
