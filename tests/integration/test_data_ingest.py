"""Ingestion in Ray tasks (data/ingest.py): pieces of a JSONL file tokenised by real tasks give
the rows, bad rows and summary of the in-process path, a bad row is named by file and row from
whichever task found it, and a later run reuses the shards. Then `stardss train loss.kind=sft`
trains from the shards (ShardSteps: each worker reads its own rows).

Cost: one Ray session (~10 s) and one 2-step sft fit (~30 s)."""
from __future__ import annotations

import json
import random

import pytest

from stardss.config import load_job
from stardss.data.load import load_training_data, prepare_training_data
from stardss.data.quarantine import BadRowSink
from stardss.data.rows import BadRow
from tests.helpers import DEMO_JOB, FAST, tokenizer

WORDS = "alpha beta gamma delta safe harm help answer question model".split()


def _write(path, n, bad_at=()):
    rng = random.Random(4)
    with open(path, "w") as f:
        for i in range(n):
            row = {"prompt": " ".join(rng.choices(WORDS, k=6)),
                   "response": " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))}
            if i in bad_at:
                row = {"prompt": "no response"}
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def data_job(tmp_path_factory, base_model):
    root = tmp_path_factory.mktemp("ingest")
    _write(root / "rows.jsonl", 1500, bad_at=(333, 1200))

    def job(*overrides):
        return load_job(DEMO_JOB, [f"model.name_or_path={base_model}", f"out_dir={root / 'out'}",
                                   f"data.sources=[{{path: {root / 'rows.jsonl'}}}]",
                                   "data.max_length=128", "loss.kind=sft", *FAST, *overrides])

    return job, root


def test_ray_tasks_give_the_in_process_rows_and_are_reused(ray_session, data_job):
    job_of, root = data_job
    job = job_of("data.on_bad_row=quarantine")
    out = root / "q"
    # ~5 pieces of 20 kB: more tasks than the session's 2 CPUs
    _, got = prepare_training_data(job.data, job.model, job.model.name_or_path, out,
                                   seed=job.seed, parallel=True, target_bytes=20_000)
    _, again = prepare_training_data(job.data, job.model, job.model.name_or_path, out,
                                     seed=job.seed, parallel=True, target_bytes=20_000)
    with BadRowSink("quarantine", root / "mem.jsonl") as sink:
        ref = load_training_data(job.data, tokenizer(), sink, seed=job.seed)
    assert len(got.shards.parts) >= 4
    assert [vars(e) for e in got.encoded] == [vars(e) for e in ref.encoded]
    assert {k: v for k, v in got.summary.items() if k != "shards"} == ref.summary
    assert (out / "quarantine.jsonl").read_text() == (root / "mem.jsonl").read_text()
    assert got.summary["shards"]["reused"] == 0 and again.summary["shards"]["reused"] == 1
    assert (again.positions == got.positions).all()


def test_a_bad_row_found_by_a_later_task_names_file_and_row(ray_session, data_job):
    job_of, root = data_job
    job = job_of("data.on_bad_row=error")
    with pytest.raises(BadRow) as err:
        prepare_training_data(job.data, job.model, job.model.name_or_path, root / "e",
                              seed=job.seed, parallel=True, target_bytes=20_000)
    assert str(err.value) == f"{root / 'rows.jsonl'}: row 333: missing field 'response'"


def test_sft_trains_from_the_shards(ray_session, data_job):
    from stardss.commands.train import run_train

    job_of, root = data_job
    job = job_of("data.on_bad_row=quarantine", "train.max_steps=2", "train.workers=2")
    summary = run_train(job)
    bad = summary["data"]["bad_rows"]
    assert bad["by_reason"]["missing_field"] == 2  # rows 333 and 1200
    assert summary["steps"] == 2
    assert summary["rows_trained"] == summary["data"]["rows_encoded"] == 1500 - bad["total"]
    assert summary["data"]["shards"]["dir"] == str(root / "out" / "shards")
    assert summary["final_loss"] is not None and summary["final_loss"] > 0
