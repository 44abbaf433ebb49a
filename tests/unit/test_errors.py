"""stardss/errors.py: which failures are the user's (exit 2) and the one line each prints,
also when Ray hands the error back wrapped (RayTaskError, Ray Train's WorkerGroupError,
stardss.raytools.RemoteError)."""
import pickle

import pytest
import ray
from ray.exceptions import RayTaskError
from ray.train import WorkerGroupError

from stardss import raytools
from stardss.config.fields import ConfigError
from stardss.data.rows import BadRow
from stardss.data.sources import SourceError
from stardss.errors import ModelNotFound, UserError, exit_code_of, one_line
from stardss.eval.attacks import AttackError
from stardss.eval.judges import JudgeError
from stardss.eval.layouts import EvalSetError
from stardss.eval.report import ReportError
from stardss.guard.pool import GuardPoolError

BAD = BadRow("d.jsonl", 3, "missing field 'response'", {"prompt": "x"}, kind="missing_field")


@pytest.mark.parametrize("err, line", [
    (ConfigError("train.lrr: no such key"), "stardss: config error: train.lrr: no such key"),
    (BAD, "stardss: data error: d.jsonl: row 3: missing field 'response'"),
    (SourceError("data source 'x': no column 'q'"),
     "stardss: data error: data source 'x': no column 'q'"),
    (EvalSetError("adv.csv:3: 3 fields, expected 2"),
     "stardss: eval error: adv.csv:3: 3 fields, expected 2"),
    (JudgeError("judge 'j': no API key"), "stardss: eval error: judge 'j': no API key"),
    (AttackError("attack 'a': unknown"), "stardss: eval error: attack 'a': unknown"),
    (ReportError("runs/x: no such folder"), "stardss: report error: runs/x: no such folder"),
    (ModelNotFound("model.name_or_path: no such folder 'm'"),
     "stardss: model error: model.name_or_path: no such folder 'm'"),
    (FileNotFoundError("data source 'd': no such file: d.jsonl"),
     "stardss: file error: data source 'd': no such file: d.jsonl"),
])
def test_user_errors_exit_2_with_their_message(err, line):
    assert isinstance(err, UserError) or isinstance(err, FileNotFoundError)
    assert exit_code_of(err) == 2
    assert one_line(err) == line


@pytest.mark.parametrize("err, line", [
    (GuardPoolError("guard pool: no batch finished within 60s"),
     "stardss: runtime error: guard pool: no batch finished within 60s"),
    (raytools.RemoteError("feed: no result within 5s"),
     "stardss: runtime error: feed: no result within 5s"),
    (KeyError("x"), "stardss: runtime error: KeyError: 'x'"),
    (ValueError("no usable thing\nsecond line"),
     "stardss: runtime error: ValueError: no usable thing; second line"),
    (RuntimeError(), "stardss: runtime error: RuntimeError"),
])
def test_runtime_failures_exit_1_naming_the_type(err, line):
    assert exit_code_of(err) == 1
    assert one_line(err) == line


def _task_error(cause: BaseException) -> RayTaskError:
    return RayTaskError("train_fn", "Traceback (most recent call last):\n  File ...\n"
                        f"{type(cause).__name__}: {cause}", cause)


def test_a_bad_row_inside_ray_wrappers_is_still_the_users():
    for wrapped in (_task_error(BAD), _task_error(BAD).as_instanceof_cause()):
        assert exit_code_of(wrapped) == 2
        assert one_line(wrapped) == "stardss: data error: d.jsonl: row 3: missing field 'response'"
    # Ray Train: the worker's failure inside WorkerGroupError, itself raised from our driver
    group = WorkerGroupError("[Rank 1]\nTraceback ...", {0: KeyError("y"), 1: _task_error(BAD)})
    try:
        try:
            raise group
        except WorkerGroupError as err:
            raise raytools.RemoteError("ray train: training failed") from err
    except raytools.RemoteError as outer:
        assert exit_code_of(outer) == 2
        assert one_line(outer) == "stardss: data error: d.jsonl: row 3: missing field 'response'"


def test_ray_wrappers_of_runtime_failures_stay_runtime():
    wrapped = _task_error(KeyError("z")).as_instanceof_cause()
    assert exit_code_of(wrapped) == 1
    group = WorkerGroupError("[Rank 0] boom", {0: _task_error(RuntimeError("oom"))})
    assert exit_code_of(group) == 1
    assert one_line(group) == ("stardss: runtime error: WorkerGroupError: Training failed due to "
                               "worker errors:; [Rank 0] boom")
    # an error raised while handling a user error (implicit context) is not the user's
    try:
        try:
            raise BAD
        except BadRow:
            raise GuardPoolError("guard pool: could not start")  # noqa: B904
    except GuardPoolError as err:
        assert exit_code_of(err) == 2  # the context still says why: the bad row
    try:
        try:
            raise BAD
        except BadRow:
            raise GuardPoolError("guard pool: could not start") from None
    except GuardPoolError as err:
        assert exit_code_of(err) == 1


def test_user_errors_cross_process_boundaries():
    """Ray pickles a worker's exception: the marker survives, so does the message."""
    for err in (BAD, ConfigError("k: bad"), ModelNotFound("m: none")):
        back = pickle.loads(pickle.dumps(err))
        assert isinstance(back, UserError) and one_line(back) == one_line(err)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote
def _reads_a_bad_row():
    raise BadRow("w.jsonl", 7, "invalid JSON: Expecting value (column 1)", "{",
                 kind="invalid_json")


def test_a_bad_row_raised_in_a_real_ray_task(local_ray):
    with pytest.raises(raytools.RemoteError) as info:
        raytools.get(_reads_a_bad_row.remote(), timeout_s=60, what="read rows")
    assert exit_code_of(info.value) == 2
    assert one_line(info.value) == ("stardss: data error: w.jsonl: row 7: invalid JSON: "
                                    "Expecting value (column 1)")


def test_an_unreachable_ray_address_is_the_users(monkeypatch, tmp_path):
    """ray.init(address="auto") raises ConnectionError from inside Ray when it finds no cluster.
    It looks for one in the temp dir (empty here) and among this machine's processes: a head
    another test runs would be joined (test_cluster_submit.py covers `auto` resolving to an
    address where nothing answers, deterministically)."""
    from ray._private.services import find_gcs_addresses

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    if find_gcs_addresses():
        pytest.skip("a Ray head runs on this machine: `auto` would join it")
    with pytest.raises(ConnectionError) as info:
        try:
            ray.init(address="auto", _temp_dir=str(tmp_path))
        finally:
            ray.shutdown()
    assert exit_code_of(info.value) == 2
    assert one_line(info.value).startswith(
        "stardss: ray error: ray.address: cannot connect: Could not find any running Ray "
        "instance.")
    assert exit_code_of(ConnectionError("refused")) == 1  # not from ray.init: not the address


@pytest.mark.parametrize("status, reason, code", [
    (None, "unreachable", 2), (None, "config", 2), (200, "protocol", 2), (401, None, 2),
    (404, None, 2), (400, None, 2),
    (500, None, 1), (503, None, 1), (429, None, 1), (408, None, 1), (None, "timeout", 1),
    (None, "dropped", 1),
])
def test_an_http_failure_is_the_users_only_when_the_request_was_wrong(status, reason, code):
    """A wrong URL, key or model name is the user's (2); a server that fails, is slow or
    overloaded after every retry is a runtime failure (1); both print one line."""
    from stardss.httpclient import HttpError

    err = HttpError("judge 'j': http://h/v1/chat/completions answered ...", status, reason)
    assert exit_code_of(err) == code
    assert one_line(err).startswith("stardss: http error: judge 'j': ")
    assert "\n" not in one_line(err)
