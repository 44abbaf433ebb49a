"""train.resume: which Ray Train run an attempt continues, and what must match to continue."""
import json
from dataclasses import replace

import pytest

from stardss.config.schema import TrainConfig
from stardss.errors import USER, exit_code_of
from stardss.train.batches import TrainRow
from stardss.train.resume import (
    RUN_FILE,
    ResumeError,
    choose_attempt,
    mark_finished,
    rows_digest,
    run_digest,
)

ROWS = [TrainRow("a", [1, 2, 3], [0, 1, 1], [0.0, 1.0, 0.5]), TrainRow("b", [4, 5], [0, 1],
                                                                      [0.0, 1.0])]
PLAN = [[0, 1], [1, None]]
JOB = {"loss": {"kind": "dss"}, "star": {"threshold": None, "cache": True}, "seed": 0}


def _digest(train=TrainConfig(), job=JOB, plan=PLAN, rows=ROWS):
    return run_digest(train, job, plan, rows_digest(rows))


def test_digest_follows_what_training_computes_not_how_it_is_operated():
    base = _digest()
    for operational in (dict(resume="auto"), dict(max_failures=3), dict(timeout_s=5.0),
                        dict(log_every=1), dict(checkpoint_every=7), dict(keep_checkpoints=9),
                        dict(start_timeout_s=1.0)):
        assert _digest(replace(TrainConfig(), **operational)) == base
    assert _digest(job={**JOB, "star": {"threshold": None, "cache": False}}) == base
    changed = [_digest(replace(TrainConfig(), lr=1e-3)), _digest(plan=[[1, 0], [1, None]]),
               _digest(job={**JOB, "loss": {"kind": "sft"}}),
               _digest(rows=[replace(ROWS[0], weights=[0.0, 1.0, 0.25]), ROWS[1]]),
               _digest(rows=[replace(ROWS[0], id="c"), ROWS[1]])]
    assert base not in changed and len(set(changed)) == len(changed)


def test_never_starts_a_new_run_every_time(tmp_path):
    first, why = choose_attempt(tmp_path, "never", "dss", "d1")
    assert not first.resumed and first.name.startswith("dss-") and why == ""
    record = json.loads((tmp_path / RUN_FILE).read_text())
    assert record["name"] == first.name and record["finished"] is False
    second, _ = choose_attempt(tmp_path, "never", "dss", "d1")
    assert second.name != first.name and not second.resumed


def test_auto_continues_only_an_unfinished_run_of_the_same_job(tmp_path):
    fresh, why = choose_attempt(tmp_path, "auto", "dss", "d1")
    assert not fresh.resumed and "no earlier run" in why
    again, why = choose_attempt(tmp_path, "auto", "dss", "d1")  # the driver died: continue
    assert again.resumed and again.name == fresh.name and "continuing" in why
    with pytest.raises(ResumeError, match=r"stardss_run.json is an unfinished run of another "
                                          r"job") as err:
        choose_attempt(tmp_path, "auto", "dss", "d2")
    assert exit_code_of(err.value) == USER
    mark_finished(tmp_path, again)
    after, why = choose_attempt(tmp_path, "auto", "dss", "d2")  # finished: a new run
    assert not after.resumed and after.name != fresh.name and "finished" in why


def test_an_older_attempt_never_marks_the_newer_one_finished(tmp_path):
    old, _ = choose_attempt(tmp_path, "never", "dss", "d1")
    new, _ = choose_attempt(tmp_path, "never", "dss", "d1")
    mark_finished(tmp_path, old)
    assert json.loads((tmp_path / RUN_FILE).read_text())["finished"] is False
    mark_finished(tmp_path, new)
    assert json.loads((tmp_path / RUN_FILE).read_text())["finished"] is True


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"digest": "d1"}'])
def test_an_unreadable_run_record_is_named(tmp_path, text):
    (tmp_path / RUN_FILE).write_text(text)
    with pytest.raises(ResumeError, match=r"stardss_run.json: not a stardss run record"):
        choose_attempt(tmp_path, "auto", "dss", "d1")


def test_only_auto_with_an_unfinished_run_continues_it(tmp_path):
    """What the train command asks before planning (whether an earlier attempt's snapshots
    are this run's): never, no record, or a finished one start anew."""
    from stardss.train.resume import would_continue

    assert not would_continue(tmp_path, "auto") and not would_continue(tmp_path, "never")
    attempt, _ = choose_attempt(tmp_path, "never", "dss", "d1")
    assert would_continue(tmp_path, "auto") and not would_continue(tmp_path, "never")
    mark_finished(tmp_path, attempt)
    assert not would_continue(tmp_path, "auto")
