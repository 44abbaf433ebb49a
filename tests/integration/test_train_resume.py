"""train.resume=auto after the whole `stardss train` process was SIGKILLed mid-run: the rerun
continues from the run folder's last Ray Train checkpoint and ends where an uninterrupted run
ends (steps, data order, losses, weights), and the rows the killed run handed to training come
from the STAR cache, not the guardrail pool."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from stardss.commands.train import run_train
from stardss.star.cache import StarCache
from stardss.train.resume import RUN_FILE
from tests.helpers import DEMO_JOB, FAST, make_job

STEPS, EVERY = 24, 3  # 21 steps left after the first checkpoint: the kill lands mid-run
RUN = ["scoring.mode=stream", f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}",
       "train.micro_batch_size=4", "train.grad_accum=1", "scoring.actors.batch_size=4"]


def _overrides(root: Path, base_model: str, *more: str) -> list[str]:
    return [*RUN, f"star.cache_dir={root}/cache", *more]


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def _log(summary):
    with open(f"{summary['model_dir']}/stardss_train_log.json") as f:
        return [(s["step"], s["tokens"], s["loss"]) for s in json.load(f)["steps"]]


def _checkpointed(storage: Path) -> bool:
    """Ray Train has registered a checkpoint of the run (what a restore hands the workers)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if "checkpoint_" in snapshot.read_text():
                return True
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def uninterrupted(ray_session, base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    job = make_job(root, base_model, *_overrides(root, base_model))
    return run_train(job, out_dir=str(root / "run"))


@pytest.fixture(scope="module")
def killed(base_model, tmp_path_factory):
    """`stardss train` in its own process (and its own local Ray), SIGKILLed once Ray Train
    has registered its first checkpoint; what the STAR cache held at that moment."""
    root = tmp_path_factory.mktemp("killed")
    args = [sys.executable, "-m", "stardss", "train", DEMO_JOB, f"model.name_or_path={base_model}",
            f"out_dir={root}", *FAST, *_overrides(root, base_model)]
    log = open(root / "driver.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    storage = root / "dss" / "ray_train"  # the train command's folder: <out_dir>/<loss kind>
    deadline = time.monotonic() + 300
    try:
        while not _checkpointed(storage):
            assert proc.poll() is None, (root / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's processes fate-share it
        proc.wait(timeout=30)
    finally:
        time.sleep(2)
        try:  # what outlived the driver (Ray's agents) goes too: no second Ray lingers
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    return root, _keys_by_part(root / "cache")


def _keys_by_part(cache_dir: Path) -> dict[str, set]:
    """The STAR cache's entries on disk, by part file."""
    return {p.name: set(pq.read_table(p, columns=["key"]).column("key").to_pylist())
            for p in StarCache(cache_dir).part_files()}


def test_a_killed_driver_leaves_an_unfinished_run(killed):
    root, parts = killed
    record = json.loads((root / "dss" / "ray_train" / RUN_FILE).read_text())
    assert record["finished"] is False
    assert not (root / "dss" / "model").exists() and not (root / "dss" / "summary.json").exists()
    # one part per step handed to training (its new rows on disk before the step went)
    assert len(parts) >= EVERY and all(parts.values())


def test_resume_auto_ends_like_an_uninterrupted_run_and_rescores_nothing(
        killed, uninterrupted, base_model):
    root, before = killed
    job = make_job(root, base_model, *_overrides(root, base_model), "train.resume=auto")
    resumed = run_train(job)  # the same command: <out_dir>/dss
    assert resumed["steps"] == STEPS
    with open(Path(resumed["model_dir"]) / "stardss_train_log.json") as f:
        resumed_from = json.load(f)["metrics"]["resumed_from"]
    assert len(resumed_from) == 1 and resumed_from[0] % EVERY == 0 and resumed_from[0] >= EVERY
    # the same steps, data order (tokens per step) and losses as the run nobody killed
    assert _log(resumed) == _log(uninterrupted)
    reference = _weights(uninterrupted["model_dir"])
    weights = _weights(resumed["model_dir"])
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    # every row scored before the kill came from the cache; the pool scored only the others
    # (hits count requests: two rows with the same texts share one entry)
    old = set().union(*before.values())
    new = set().union(*(keys for name, keys in _keys_by_part(root / "cache").items()
                        if name not in before))
    assert new and not new & old
    star = resumed["star"]
    assert star["cache"]["hits"] >= len(old) and star["scored"] >= len(new)
    assert star["cache"]["hits"] + star["scored"] == uninterrupted["star"]["scored"]
    record = json.loads((root / "dss" / "ray_train" / RUN_FILE).read_text())
    assert record["finished"] is True


def test_a_changed_job_is_not_spliced_onto_the_unfinished_run(ray_session, base_model, tmp_path):
    """An unfinished run and a job that trains something else: refused before training."""
    storage = tmp_path / "dss" / "ray_train"
    storage.mkdir(parents=True)
    (storage / RUN_FILE).write_text(json.dumps({"name": "dss-1", "digest": "0" * 64,
                                                "finished": False}))
    job = make_job(tmp_path, base_model, *_overrides(tmp_path, base_model), "train.resume=auto",
                   "loss.kind=sft", "train.max_steps=2")
    from stardss.train.resume import ResumeError

    with pytest.raises(ResumeError, match=r"stardss_run.json is an unfinished run of another "
                                          r"job"):
        run_train(job, out_dir=str(tmp_path / "dss"))
