"""What the driver tells the user: one-line logs and progress bars, on stderr."""
from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[stardss] {msg}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar (stderr) for loops that report (done, total)."""

    def __init__(self, what: str, unit: str = "it"):
        self.what, self.unit, self._bar = what, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"[stardss] {self.what}", unit=self.unit,
                             file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
