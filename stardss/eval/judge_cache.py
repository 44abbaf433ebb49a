"""Verdicts of paid judges on disk, so that evaluating the same responses again costs no calls.

An entry is keyed by sha256 of (judge fingerprint, prompt, response): the fingerprint names
everything the verdict depends on (judge kind, model, template text, verdict patterns), so a
changed template or model never reads an old verdict. Each fingerprint has its own JSONL file,
`<folder>/<sha256(fingerprint)[:16]>.jsonl`, one entry a line, appended and flushed per `put`
(a run that stops half-way keeps what it paid for), read the first time that judge asks.

A line holds the key and the verdict (label, p_safe, raw: the judge's own answer) and nothing
else: no prompt, no response, never an API key (no request detail is ever written).
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Optional

from .items import VERDICTS, Verdict


def entry_key(fingerprint: str, prompt: str, response: str) -> str:
    # JSON of the three: no two different triples give the same text (plain concatenation would).
    text = json.dumps([fingerprint, prompt, response], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class JudgeCache:
    """A folder of verdicts; thread-safe (a judge's request threads put at once)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._loaded: dict[str, dict[str, Verdict]] = {}  # fingerprint -> key -> verdict

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.folder)!r})"

    def path(self, fingerprint: str) -> Path:
        """The file of one judge's verdicts."""
        name = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        return self.folder / f"{name}.jsonl"

    def get(self, fingerprint: str, prompt: str, response: str) -> Optional[Verdict]:
        """The verdict stored for this judge, prompt and response; None when there is none."""
        with self._lock:
            return self._entries(fingerprint).get(entry_key(fingerprint, prompt, response))

    def put(self, fingerprint: str, prompt: str, response: str, verdict: Verdict) -> None:
        """Store a verdict (written to disk before this returns)."""
        if verdict.label not in VERDICTS:
            raise ValueError(f"judge cache: {verdict.label!r} is not a verdict ({VERDICTS})")
        key = entry_key(fingerprint, prompt, response)
        line = json.dumps({"key": key, "label": verdict.label, "p_safe": verdict.p_safe,
                           "raw": verdict.raw}, ensure_ascii=False)
        with self._lock:
            entries = self._entries(fingerprint)
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.path(fingerprint), "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
            entries[key] = verdict

    def _entries(self, fingerprint: str) -> dict[str, Verdict]:
        # Called with the lock held.
        entries = self._loaded.get(fingerprint)
        if entries is None:
            entries = self._loaded[fingerprint] = _read(self.path(fingerprint))
        return entries


def _read(path: Path) -> dict[str, Verdict]:
    entries: dict[str, Verdict] = {}
    if not path.exists():
        return entries
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label, key = row["label"], row["key"]
                if label not in VERDICTS or not isinstance(key, str):
                    raise ValueError(f"label {label!r}")
                p_safe = row.get("p_safe")
                verdict = Verdict(label, None if p_safe is None else float(p_safe),
                                  str(row.get("raw", "")))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a judge cache entry ({err}); delete the line "
                                 f"(or the file, to judge again)") from None
            entries[key] = verdict  # a later line wins
    return entries
