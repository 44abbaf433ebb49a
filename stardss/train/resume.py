"""`train.resume=auto`: continuing a run whose driver died (SIGKILL, a lost head node, a failed
job) from its last resumable checkpoint.

Ray Train restores a run by its name and storage folder: a fit started with the same
`RunConfig(name, storage_path)` reads the checkpoint manager's snapshot and hands the workers
the newest checkpoint (`ray.train.get_checkpoint()`), and the worker loop resumes at the step
after it (checkpoint.restore). What stardss adds is the choice of that name and a guard:

    <out_dir>/ray_train/stardss_run.json   {"name", "digest", "finished"} of the latest attempt

An unfinished attempt is continued only when the new one would train the same thing: the same
`digest` over the seeded plan, every row's id, tokens and weights (or, for rows in shards,
the shards' content keys and the mixture's order), and the job sections that
shape training (operational knobs such as timeouts, max_failures or logging left out). A job
that changed is refused, naming the file, instead of splicing two different runs together.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import UserError

RUN_FILE = "stardss_run.json"

# Settings that change how a run is operated, not what it computes: a resumed attempt may
# differ in them (e.g. more time, more restarts).
OPERATIONAL_TRAIN = ("resume", "max_failures", "timeout_s", "start_timeout_s",
                     "health_check_interval_s", "log_every", "keep_checkpoints",
                     "checkpoint_every")
OPERATIONAL_STAR = ("cache", "cache_dir")
SHAPING_SECTIONS = ("loss", "model", "reference", "guardrails", "star", "seed")


class ResumeError(UserError):
    """train.resume=auto found an unfinished run of a different job, or a run record it
    cannot read."""

    error_kind = "resume"


@dataclass(frozen=True)
class Attempt:
    name: str
    """Ray Train's run name (RunConfig.name): the same name continues that run."""
    resumed: bool
    """True: an earlier unfinished attempt of this run is continued."""


def rows_digest(rows: Sequence) -> str:
    """sha256 over every row's id and tokens (TrainRow: also its loss mask and weights;
    EncodedRow: where its response starts): the data a run trains, in order. Rows read from
    content-addressed shards (data.shards.RowsView) carry their digest: the shards' keys and
    the order, so a large run is not hashed row by row."""
    if hasattr(rows, "digest"):
        return rows.digest
    h = hashlib.sha256()
    for r in rows:
        h.update(r.id.encode("utf-8", "surrogatepass") + b"\0")
        h.update(np.asarray(r.input_ids, dtype=np.int64).tobytes())
        if hasattr(r, "weights"):
            h.update(np.asarray(r.loss_mask, dtype=np.int8).tobytes())
            h.update(np.asarray(r.weights, dtype=np.float64).tobytes())
        else:
            h.update(int(r.response_start).to_bytes(8, "big"))
            if getattr(r, "token_turn", None) is not None:  # data.train_turns=all
                h.update(np.asarray(r.token_turn, dtype=np.int64).tobytes())
        h.update(b"\1")
    return h.hexdigest()


def run_digest(train, job_record: dict, plan: Sequence[Sequence[Optional[int]]],
               rows_sha: str) -> str:
    """What an attempt trains: `train` (TrainConfig) minus operational knobs, the job record's
    sections that shape training, the plan and the rows' digest."""
    shaping = {k: v for k, v in asdict(train).items() if k not in OPERATIONAL_TRAIN}
    record = {k: job_record.get(k) for k in SHAPING_SECTIONS}
    if isinstance(record.get("star"), dict):
        record["star"] = {k: v for k, v in record["star"].items() if k not in OPERATIONAL_STAR}
    blob = json.dumps({"train": shaping, "job": record, "plan": [list(s) for s in plan],
                       "rows": rows_sha}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def choose_attempt(storage: Path, mode: str, run_name: str, digest: str) -> tuple[Attempt, str]:
    """The Ray Train run name this fit uses and a line saying why; writes RUN_FILE (unfinished)
    before training starts. `mode`: train.resume."""
    path = storage / RUN_FILE
    earlier = _read(path)
    fresh = Attempt(f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", False)
    if mode == "never":
        why = ""
    elif earlier is None:
        why = f"train.resume=auto: no earlier run in {storage}; starting at step 0"
    elif earlier.get("finished"):
        why = (f"train.resume=auto: the last run in {storage} ({earlier['name']}) finished; "
               f"starting a new one at step 0")
    elif earlier.get("digest") != digest:
        raise ResumeError(
            f"train.resume=auto: {path} is an unfinished run of another job (its data, plan or "
            f"training settings differ); resume it with the job it ran, or use "
            f"train.resume=never or another out_dir")
    else:
        attempt = Attempt(earlier["name"], True)
        _write(path, {**earlier, "resumed_at": _now()})
        return attempt, (f"train.resume=auto: continuing {attempt.name} in {storage} from its "
                         f"last checkpoint")
    _write(path, {"name": fresh.name, "digest": digest, "finished": False, "started": _now()})
    return fresh, why


def would_continue(storage: Path, mode: str) -> bool:
    """Whether a run in `storage` with train.resume=`mode` continues an earlier attempt (an
    unfinished one is there), before the data is planned: what the run folder's other files
    (safety-over-training snapshots) of an earlier attempt are worth keeping for. The digest
    is checked later, when the attempt is chosen (choose_attempt)."""
    if mode != "auto":
        return False
    earlier = _read(storage / RUN_FILE)
    return earlier is not None and not earlier.get("finished")


def mark_finished(storage: Path, attempt: Attempt) -> None:
    """The attempt wrote its final model: train.resume=auto starts anew after it."""
    path = storage / RUN_FILE
    record = _read(path) or {"name": attempt.name}
    if record.get("name") == attempt.name:  # another attempt may own the folder now
        _write(path, {**record, "finished": True, "finished_at": _now()})


def _read(path: Path) -> Optional[dict]:
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path}: not a stardss run record ({err}); delete it to start "
                        f"anew") from None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ResumeError(f"{path}: not a stardss run record (no run name); delete it to start "
                        f"anew")
    return record


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)  # a driver killed mid-write leaves the old record whole


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
