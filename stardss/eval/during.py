"""Safety over training: the snapshots a run writes (<run>/snapshots/step_<n>/, a Hugging Face
folder each, renamed into place when complete) are answered and judged in a background thread
of the driver while training goes on, and the safety rate of each row is logged against the
step (W&B and <run>/safety_over_training.jsonl, one line per snapshot).

One snapshot at a time, oldest first: one generation actor for the run (eval.during_training
num_cpus / num_gpus, nice 19 when it reserves no CPU, so on a laptop it takes only the cycles
training leaves), started before training, loads it and answers the first `limit` items of
each chosen safety set, and the judge reads the answers. After training the monitor evaluates
what is left and stops; a failure in the background is raised there, naming the snapshot,
never swallowed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config.evaluation import DuringTrainingConfig, GenerationConfig
from ..console import log
from .generation import GenerationPool
from .items import EvalItem
from .results import build_results

SNAPSHOT = re.compile(r"step_(\d+)")
_POLL_S = 0.5


def during_items(items: Sequence[EvalItem], dt: DuringTrainingConfig) -> list[EvalItem]:
    """The first `dt.limit` plain items of each chosen safety set (all safety sets when
    dt.sets is empty)."""
    chosen: dict[str, list[EvalItem]] = {}
    for it in items:
        if it.task == "safety" and it.attack is None and (not dt.sets or it.set in dt.sets):
            mine = chosen.setdefault(it.set, [])
            if len(mine) < dt.limit:
                mine.append(it)
    return [it for mine in chosen.values() for it in mine]


def monitor_generation(gen: GenerationConfig, dt: DuringTrainingConfig) -> GenerationConfig:
    """The eval generation settings on one actor with the monitor's own reservation."""
    return dataclasses.replace(gen, actors=1, num_cpus=dt.num_cpus, num_gpus=dt.num_gpus,
                               resources={})


class SafetyMonitor:
    """Evaluates snapshots in a background thread; `start()`, then `finish()` after training
    (or use as a context manager around training). `judge` is a safety Judge
    (stardss/eval/judges.py); `tracker` a stardss.tracking.Tracker."""

    def __init__(self, snapshot_dir: str, dt: DuringTrainingConfig, gen: GenerationConfig,
                 items: Sequence[EvalItem], judge: Any, *, start_model: str, seed: int,
                 out_file: str, tracker: Any = None):
        if not items:
            raise ValueError("eval.during_training: no safety items to evaluate")
        self.snapshot_dir, self.dt = Path(snapshot_dir), dt
        self.gen = monitor_generation(gen, dt)
        self.items, self.judge, self.seed = list(items), judge, seed
        self.out_file, self.tracker = Path(out_file), tracker
        # One actor for the whole run, started (imports, model load) before training begins
        # and given each snapshot in turn: a process per snapshot would pay its start-up,
        # at full priority, while training runs.
        self.pool = GenerationPool(start_model, self.gen, seed=seed,
                                   nice=19 if dt.num_cpus == 0 else 0)
        self.done: list[dict] = []  # one record per evaluated snapshot
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="safety-monitor", daemon=True)
        self.busy_s = 0.0  # time spent evaluating (the cost's upper bound on a shared machine)

    def start(self) -> "SafetyMonitor":
        self.pool.start()
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text("")  # a rerun starts its own curve
        self._thread.start()
        return self

    def pending(self) -> list[tuple[int, Path]]:
        """Complete snapshots not evaluated yet, oldest first."""
        if not self.snapshot_dir.is_dir():
            return []
        found = []
        for p in self.snapshot_dir.iterdir():
            m = SNAPSHOT.fullmatch(p.name)
            if m and p.is_dir() and int(m.group(1)) not in self._seen:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.is_set()  # read before listing: nothing written after
                for step, folder in self.pending():
                    self.evaluate(step, folder)
                if stopping:
                    return
                self._stop.wait(_POLL_S)
        except BaseException as err:  # noqa: BLE001 - raised again by finish()
            self._error = err

    def evaluate(self, step: int, folder: Path) -> dict:
        """Answer and judge one snapshot; its record (step, per row: k, n, rate, lo, hi)."""
        self._seen.add(step)
        while_training = not self._stop.is_set()
        started = time.perf_counter()
        try:
            self.pool.reload(str(folder))
            generations = self.pool.generate(self.items)
            texts = [generations[it.key].text for it in self.items]
            verdicts = {self.judge.name: dict(zip((it.key for it in self.items),
                                                  self.judge.judge(self.items, texts)))}
            results, _ = build_results(self.items, generations, verdicts,
                                       {self.judge.name: "safety"}, {})
        except Exception as err:
            raise RuntimeError(f"safety over training: snapshot step {step} ({folder}): "
                               f"{err}") from err
        rows = {row: {k: r["metrics"][self.judge.name][k] for k in ("k", "n", "rate", "lo", "hi")}
                for row, r in results["rows"].items()}
        seconds = time.perf_counter() - started
        self.busy_s += seconds
        record = {"step": step, "judge": self.judge.name, "rows": rows,
                  "seconds": round(seconds, 3), "while_training": while_training}
        with open(self.out_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.done.append(record)
        if self.tracker is not None:
            self.tracker.log({f"safety_over_training/{row}": r["rate"]
                              for row, r in rows.items()} | {"train_step": step})
        log("safety over training: step " + str(step) + ": " + ", ".join(
            f"{row} {r['rate']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}]" for row, r in rows.items()))
        if not self.dt.keep_snapshots:
            shutil.rmtree(folder, ignore_errors=True)
        return record

    def finish(self, timeout_s: float) -> list[dict]:
        """After training: evaluate the snapshots left, stop, and return every record; the
        background's error, if any, is raised here. Bounded: RuntimeError after timeout_s."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"safety over training: still evaluating after {timeout_s:g}s "
                               f"(snapshots left in {self.snapshot_dir})")
        self.pool.close()
        if self._error is not None:
            raise self._error
        return self.done

    def __enter__(self) -> "SafetyMonitor":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        self._stop.set()  # training failed: stop without waiting for the queue
        self._seen.update(step for step, _ in self.pending())
        self._thread.join(self.gen.timeout_s)
        self.pool.close()
