"""Where bad rows go: either they stop the run, or they are written aside and counted."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO

from ..config.fields import check_choice
from ..config.schema import DataConfig
from .rows import BadRow


class BadRowSink:
    """mode "error": `handle` re-raises the BadRow. mode "quarantine": `handle` appends
    {"source", "row", "reason", "raw"} as one JSON line to `path` and counts it.

    The file is opened on the first bad row, so a clean run leaves no quarantine file; it is
    opened for appending, so several sinks (train data, eval sets) may share one path.
    """

    def __init__(self, mode: str, path: str | Path | None = None):
        check_choice(DataConfig, "on_bad_row", mode)
        if mode == "quarantine" and path is None:
            raise ValueError("on_bad_row: quarantine needs a file path to write bad rows to")
        self.mode = mode
        self.path = Path(path) if path is not None else None
        self._file: IO[str] | None = None
        self._by_source: Counter[str] = Counter()
        self._by_reason: Counter[str] = Counter()

    def handle(self, bad: BadRow) -> None:
        if self.mode == "error":
            raise bad
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered so the records already written survive a crash later in the run.
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        record = {"source": bad.source, "row": bad.row, "reason": bad.reason, "raw": bad.raw}
        # ensure_ascii keeps lone surrogates from raw text writable as \\udcxx escapes.
        self._file.write(json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n")
        self._by_source[bad.source] += 1
        self._by_reason[bad.kind] += 1

    @property
    def counts(self) -> dict:
        """{"total": n, "by_source": {source: n}, "by_reason": {kind: n}}."""
        return {"total": sum(self._by_source.values()), "by_source": dict(self._by_source),
                "by_reason": dict(self._by_reason)}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "BadRowSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
