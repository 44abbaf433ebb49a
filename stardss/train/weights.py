"""Per-token STAR weights of a run's rows on disk, next to the run, so neither the driver nor a
Train worker holds a weighted row table: the STAR stage writes each row's weights as its record
arrives (any order), the workers memory-map them and build a step's rows from the shards and
these weights (feed.ShardSteps).

    <run>/weights.f32        float32 values (little-endian), every weighted row's weights
                             back to back, in the order they were written
    <run>/weights.index.npy  int64 (n_rows, 2): row i's [start, count] in weights.f32, for
                             the rows of the run's `positions` (mixture order; a row the
                             mixture repeats points at the same values); start -1 = the row
                             is unweighted (train_row(enc): weight 1.0 on every token)

Row i's `count` weights are those of its response tokens, input_ids[response_start:] (what
star.score.record_weights gives; a row that trains every assistant turn, data.train_turns=all,
has its turns' tokens there and the user turns between them at 0); float32, as the loss
reads them (batches.collate). On a cluster the run folder is on shared storage, as the shards
and Ray Train's checkpoints are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

VALUES, INDEX = "weights.f32", "weights.index.npy"


def first_copies(ids: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """(row id -> its first row, int64 (n_rows,): each row's first row with its id): a row
    the mixture repeats is weighted once, its copies take the first's values
    (WeightsWriter.close)."""
    first: dict[str, int] = {}
    copies_of = np.fromiter((first.setdefault(k, i) for i, k in enumerate(ids)), np.int64,
                            count=len(ids))
    return first, copies_of


class WeightsWriter:
    """Writes a run's weights file as rows are weighted; `get` reads a written row back (stream
    mode builds each step's rows from it). The files appear under their names on `close`."""

    def __init__(self, folder: Union[str, Path], n_rows: int):
        self.folder = Path(folder).absolute()  # unpickled where the cwd differs
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = np.full((n_rows, 2), [-1, 0], dtype=np.int64)  # (n_rows, [start, count])
        self._tmp = self.folder / f".{VALUES}.tmp"
        self._file = open(self._tmp, "w+b")  # read back by get (stream mode)
        self._end = 0  # values written
        self._dirty = False

    def put(self, rows: Union[int, Sequence[int]], weights) -> None:
        """`weights` (one per response token) for row `rows` (or several rows: a repeated
        row's copies share one set of values)."""
        values = np.ascontiguousarray(weights, dtype="<f4").reshape(-1)
        self._file.write(values.tobytes())
        self.index[rows] = (self._end, len(values))
        self._end += len(values)
        self._dirty = True

    def has(self, i: int) -> bool:
        return bool(self.index[i, 0] >= 0)

    def get(self, i: int) -> np.ndarray:
        """Row i's weights (float32), read back from the file."""
        start, count = (int(x) for x in self.index[i])
        if start < 0:
            raise KeyError(f"row {i} has no weights written")
        if self._dirty:
            self._file.flush()
            self._dirty = False
        data = os.pread(self._file.fileno(), 4 * count, 4 * start)
        return np.frombuffer(data, dtype="<f4")

    def close(self, copies_of: Optional[np.ndarray] = None) -> "TokenWeights":
        """Finish the files. `copies_of` (int64, n_rows): the row whose values each row takes
        (a repeated row's later copies take their first's); rows written directly keep
        theirs."""
        if copies_of is not None:
            unset = self.index[:, 0] < 0
            self.index[unset] = self.index[copies_of[unset]]
        self._file.close()
        np.save(self.folder / f".{INDEX}.tmp.npy", self.index)
        os.replace(self._tmp, self.folder / VALUES)
        os.replace(self.folder / f".{INDEX}.tmp.npy", self.folder / INDEX)
        return TokenWeights(self.folder)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class TokenWeights:
    """The read side: both files memory-mapped on first use (in each worker that unpickles it:
    what is shipped is the folder's path)."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder).absolute()  # unpickled where the cwd differs
        self._values: Optional[np.ndarray] = None
        self._index: Optional[np.ndarray] = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            self._index = np.load(self.folder / INDEX, mmap_mode="r")
            size = (self.folder / VALUES).stat().st_size
            # np.memmap refuses an empty file (every row unweighted)
            self._values = (np.memmap(self.folder / VALUES, dtype="<f4", mode="r") if size
                            else np.zeros(0, "<f4"))
        return self._values, self._index

    def __len__(self) -> int:
        return len(self._open()[1])

    def row(self, i: int) -> Optional[np.ndarray]:
        """Row i's weights (float32 view of the mapped file), or None when it is unweighted."""
        values, index = self._open()
        start, count = int(index[i, 0]), int(index[i, 1])
        if start < 0:
            return None
        return values[start:start + count]

    def trains_anything(self) -> bool:
        """Some row has a weight above 0 (an unweighted row trains at 1)."""
        values, index = self._open()
        return bool((index[:, 0] < 0).any() or (values > 0).any())

    @property
    def digest(self) -> str:
        """sha256 of both files: what train/resume.run_digest folds in for the weights."""
        h = hashlib.sha256()
        for name in (INDEX, VALUES):
            with open(self.folder / name, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
        return h.hexdigest()

    def __getstate__(self):
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.__init__(state["folder"])
