"""`stardss submit` without a cluster: the job is validated and the submission (runtime_env,
entrypoint, metadata) built locally; secrets come from the environment by name only."""
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.runtime_env import RuntimeEnv

from stardss import cli
from stardss.cluster import jobs
from stardss.cluster import submit as sm
from stardss.config import ConfigError
from stardss.tracking import SECRET_MARK

SECRET = "9f2c4e1a7b3d5f60a1c2e3d4b5a69788c0d1e2f3"  # shaped like a W&B key
JOB = """\
name: my job
model: {name_or_path: tok}
data: {sources: [{path: data.jsonl}]}
guardrails: [{kind: rules}]
tracking: {wandb: {mode: offline}}
"""


@pytest.fixture
def project(tmp_path):
    """A working dir with what a real project has besides the job: a venv, git, old runs,
    caches, and a file its .rayignore leaves out."""
    (tmp_path / "job.yaml").write_text(JOB)
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    for junk in (".venv/lib/x.py", ".git/HEAD", "runs/old/model.bin", "pkg/__pycache__/a.pyc",
                 "notes/private.txt"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("x")
    (tmp_path / ".rayignore").write_text("notes/\n")
    return tmp_path


def _prepare(project, *overrides, **kw):
    kw.setdefault("environ", {})
    return sm.prepare(str(project / "job.yaml"), list(overrides), working_dir=str(project), **kw)


def test_runtime_env_ships_the_project_without_its_junk(project):
    sub = _prepare(project, "submit.hf_offline=true", "submit.env_vars.HF_HOME=/shared/hf",
                   command="score")
    env = sub.runtime_env
    assert env["working_dir"] == str(project) and "pip" not in env and "uv" not in env
    assert env["env_vars"] == {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                               "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/shared/hf"}
    # Ray's own walk with these excludes: exactly what it will upload
    assert sorted(sub.upload) == [".rayignore", "data.jsonl", "job.yaml", "tok/tokenizer.json"]
    RuntimeEnv(**env)  # Ray accepts it as is
    assert sub.metadata == {"stardss_job": "my job", "stardss_command": "score",
                            "stardss_job_file": "job.yaml", "stardss_version": "0.1.0"}
    assert sub.submission_id.startswith("stardss-my-job-" + time.strftime("%Y%m%d-"))


def _argv(sub) -> list:
    """The command the entrypoint runs after its import check."""
    return shlex.split(sub.entrypoint.rsplit("; exec ", 1)[1])


def test_entrypoint_is_shell_quoted_and_joins_the_cluster(project):
    overrides = ["data.sources=[{path: 'my data.jsonl'}]", "name=it's; rm -rf ~"]
    sub = _prepare(project, *overrides, command="train", submission_id="mine")
    assert _argv(sub) == ["python", "-m", "stardss", "train", "job.yaml", *overrides,
                          "ray.address=auto"]
    assert sub.submission_id == "mine"
    sub = _prepare(project, "submit.python=/opt/v env/python")
    assert _argv(sub)[:3] == ["/opt/v env/python", "-m", "stardss"]
    with pytest.raises(ConfigError, match="submit.python"):
        _prepare(project, "submit.python='$(rm -rf ~)'")
    (project / "jobs").mkdir()
    (project / "job.yaml").rename(project / "jobs" / "j.yaml")
    sub = sm.prepare(str(project / "jobs" / "j.yaml"), working_dir=str(project), environ={},
                     command="score")
    assert _argv(sub)[3:5] == ["score", "jobs/j.yaml"]  # relative to the working dir


def test_the_entrypoint_runs_the_clusters_python_or_says_what_to_install(tmp_path):
    """The entrypoint as Ray's job supervisor runs it (`/bin/sh -c`, in the unpacked working
    dir): this venv's Python runs `-m stardss`; a Python without stardss, or none, stops it
    with exit 2 and one line saying what to install."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run(sm.entrypoint(sys.executable, ["report", "--help"]), shell=True,
                        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: stardss report"), ok.stderr
    bare = Path(sys.base_prefix) / "bin" / "python3"  # the interpreter this venv was made from
    assert bare.is_file() and sys.prefix != sys.base_prefix  # run from a venv
    fix = ("install stardss into the Python the cluster runs (its image, or the venv its ray "
           "start ran from, then set submit.python to that venv's bin/python), or let Ray "
           "install it for the job: submit.install=working_dir (a stardss checkout) or "
           "submit.pip")
    for python, why in ((str(bare), "ModuleNotFoundError: No module named 'stardss'"),
                        ("no-such-python", "/bin/sh: 1: no-such-python: not found")):
        proc = subprocess.run(sm.entrypoint(python, ["train", "job.yaml"]), shell=True,
                              capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=60)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr == (f"stardss: the cluster's Python ({python}) cannot import stardss "
                               f"({why}): {fix}\n")


def test_secrets_go_by_name_from_the_environment_and_nowhere_else(project):
    before = (project / "job.yaml").read_text()
    sub = _prepare(project, "submit.secrets=[HF_TOKEN]", secrets=["WANDB_API_KEY"],
                   environ={"WANDB_API_KEY": SECRET, "HF_TOKEN": "hf_" + "a" * 30})
    assert sub.runtime_env["env_vars"]["WANDB_API_KEY"] == SECRET
    assert sub.runtime_env["env_vars"]["HF_TOKEN"] == "hf_" + "a" * 30
    shown = json.dumps(sub.shown())
    for value in (SECRET, "hf_" + "a" * 30):
        assert value not in shown + sub.entrypoint + json.dumps(sub.metadata)
    assert sub.shown()["runtime_env"]["env_vars"]["WANDB_API_KEY"] == SECRET_MARK
    assert (project / "job.yaml").read_text() == before
    RuntimeEnv(**sub.runtime_env)


def test_a_missing_secret_is_an_error_naming_it(project):
    with pytest.raises(ConfigError, match="secret WANDB_API_KEY: not set"):
        _prepare(project, secrets=["WANDB_API_KEY"], environ={"HF_TOKEN": "x"})
    with pytest.raises(ConfigError, match="secret HF_TOKEN: not set"):
        _prepare(project, "submit.secrets=[HF_TOKEN]", environ={"HF_TOKEN": ""})


def test_secret_values_in_the_job_or_on_the_command_line_are_refused(project):
    cases = [((f"submit.secrets=[WANDB_API_KEY={SECRET}]",), {}, r"submit.secrets\[0\]"),
             ((), {"secrets": [f"WANDB_API_KEY={SECRET}"]}, "--secret"),
             ((f"submit.env_vars.WANDB_API_KEY={SECRET}",), {}, "submit.env_vars.WANDB_API_KEY"),
             ((f"ray.runtime_env.env_vars.HF_TOKEN={SECRET}",), {}, "ray.runtime_env.env_vars"),
             ((), {"secrets": [SECRET]}, "not an environment variable name")]
    for overrides, kw, key in cases:
        with pytest.raises(ConfigError, match=key) as err:
            _prepare(project, *overrides, **kw)
        assert SECRET not in str(err.value)  # the error does not echo the value


def test_the_job_must_be_inside_the_working_dir_and_uploaded(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "job.yaml"
    outside.write_text(JOB)
    with pytest.raises(ConfigError, match=f"job file {outside} is outside the working dir"):
        sm.prepare(str(outside), working_dir=str(project), environ={})
    (project / "runs" / "job.yaml").write_text(JOB)
    with pytest.raises(ConfigError, match="job file runs/job.yaml is not in the upload"):
        sm.prepare(str(project / "runs" / "job.yaml"), working_dir=str(project), environ={})
    (project / "base.yaml").write_text("seed: 1\n")
    (project / "job.yaml").write_text("defaults: [notes/base.yaml]\n" + JOB)
    (project / "notes" / "base.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="job file notes/base.yaml is not in the upload"):
        _prepare(project)


def test_config_errors_fail_at_submit_time_naming_the_key(project, capsys):
    with pytest.raises(ConfigError, match="train.lrr: no such key"):
        _prepare(project, "train.lrr=1")
    cases = [("ray.num_cpus=2", "ray.num_cpus"),
             ("ray.runtime_env.working_dir=/x", "ray.runtime_env.working_dir"),
             ("submit.env_vars.DS_ACCELERATOR=cuda", "DS_ACCELERATOR"),
             ("submit.install=conda", "submit.install"),
             ("submit.extras=[dev]", "submit.extras")]
    for override, key in cases:
        with pytest.raises(ConfigError, match=key):
            _prepare(project, override)
    with pytest.raises(ConfigError, match="--command"):
        _prepare(project, command="serve")
    # the console script: exit 2 before any contact with the (absent) head
    code = cli.main(["submit", str(project / "job.yaml"), "train.lrr=1", "--working-dir",
                     str(project), "--address", "http://127.0.0.1:9"])
    assert code == 2 and "train.lrr: no such key" in capsys.readouterr().err


def test_notes_for_paths_left_behind(project):
    sub = _prepare(project, "model.name_or_path=runs/old")
    assert any(n.startswith("model.name_or_path: runs/old exists here but is not uploaded")
               for n in sub.notes)
    assert any(n.startswith("out_dir: runs/my job is relative") for n in sub.notes)
    sub = _prepare(project, "out_dir=/shared/out")
    assert sub.notes == []


def test_install_from_the_working_dir(project):
    sub = _prepare(project, "submit.install=working_dir", "submit.extras=[dev]",
                   "submit.pip=[peft==0.21.2]")
    first, rest = sub.runtime_env["pip"][0], sub.runtime_env["pip"][1:]
    assert first.startswith("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}[dev] # ")
    assert rest == ["peft==0.21.2"]
    RuntimeEnv(**sub.runtime_env)
    (project / "data.jsonl").write_text('{"prompt": "a", "response": "changed"}\n')
    again = _prepare(project, "submit.install=working_dir", "submit.extras=[dev]")
    assert again.runtime_env["pip"][0] != first  # new content, new cached environment
    uv = _prepare(project, "submit.install=working_dir", "submit.installer=uv")
    assert uv.runtime_env["uv"][0].startswith("${RAY_RUNTIME_ENV_CREATE_WORKING_DIR} # ")
    assert "pip" not in uv.runtime_env


def test_an_upload_over_rays_limit_fails_naming_the_largest_files(project, monkeypatch):
    (project / "big.bin").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(sm, "MAX_UPLOAD", 2048)
    with pytest.raises(ConfigError, match=r"would upload .*largest: big.bin"):
        _prepare(project)
    assert "big.bin" not in _prepare(project, "submit.excludes=[big.bin]").upload


def test_no_head_or_a_silent_head_fails_with_a_sentence(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(sm.ClusterError, match="no Ray head: pass --address"):
        sm.connect(None)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(sm.ClusterError, match=f"connect to http://127.0.0.1:{port}: "):
        sm.connect(f"http://127.0.0.1:{port}")  # nothing listens: refused at once
    # A head that accepts connections and never answers: the SDK alone would wait forever.
    monkeypatch.setattr(jobs, "REQUEST_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("RAY_API_SERVER_ADDRESS", url)
        started = time.monotonic()
        with pytest.raises(sm.ClusterError, match="no answer from the Ray head within 1s"):
            sm.connect(None)  # the address from the environment
        assert time.monotonic() - started < 5


def test_an_explicit_address_beats_the_environment(monkeypatch):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        with pytest.raises(sm.ClusterError, match=f"127.0.0.1:{port}"):
            sm.connect(f"http://127.0.0.1:{port}")


def _closed_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def test_submit_runs_stardss_check_here_and_uploads_nothing_when_it_fails(project, base_model,
                                                                           capsys):
    """The check runs before any contact with the head: a bad row fails here (exit 2, the
    check's lines); --no-check, or a job that passes, goes on to the head, which here is a
    closed port: submit's own one line, exit 1."""
    (project / "data.jsonl").write_text('{"prompt": "a", "response": "b"}\n'
                                        '{"prompt": "a", "response": 7}\n')
    url = f"http://127.0.0.1:{_closed_port()}"
    argv = ["submit", str(project / "job.yaml"), f"model.name_or_path={base_model}",
            "--working-dir", str(project), "--address", url]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "connect to" not in err and "Traceback" not in err
    lines = err.splitlines()
    assert ("FAIL  data.sources[0] data.jsonl: 2 rows read, 1 bad (wrong_type 1); "
            "data.on_bad_row=error stops the run at the first one (or set "
            "data.on_bad_row=quarantine)") in lines
    assert lines[-2] == "check: 1 of 5 checks failed: a run would not start"
    assert lines[-1] == ("stardss: config error: the job would not start (the FAIL lines "
                         "above): nothing uploaded; fix them, or submit anyway with --no-check")

    assert cli.main([*argv, "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "check:" not in err
    assert err.splitlines()[-1].startswith(f"stardss: connect to {url}: ")

    # Quarantined rows pass; an absolute path missing here is the cluster's (a note).
    assert cli.main([*argv, "data.on_bad_row=quarantine",
                     "guardrails=[{kind: hf_classifier, name_or_path: /shared/no/guard}]"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert ("note  guardrails[0] hf_classifier: /shared/no/guard is not on this machine; not "
            "checked here (the cluster must have it)") in lines
    assert "check: all 4 checks ok: a run would start" in lines
    assert lines[-1].startswith(f"stardss: connect to {url}: ")


def test_init_ray_gives_up_on_an_address_where_nothing_answers(monkeypatch):
    """ray.init alone retries such an address for minutes; the probe says so at once."""
    import ray

    from stardss.cluster.resources import DRIVER_ENV, PREEMPTION_WATCHER, init_ray
    from stardss.config.schema import TrainConfig
    from stardss.errors import exit_code_of, one_line

    for name in [*DRIVER_ENV, PREEMPTION_WATCHER]:  # init_ray sets them: restored after
        monkeypatch.setenv(name, os.environ.get(name, ""))
    if ray.is_initialized():
        ray.shutdown()
    port = _closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            init_ray({"address": address}, TrainConfig())
        assert time.monotonic() - started < 15 and not ray.is_initialized()
        assert exit_code_of(info.value) == 2
        shown = address if address[0] != "r" else f"{address} (127.0.0.1:{port})"
        assert one_line(info.value) == (
            f"stardss: ray error: ray.address={shown}: no Ray cluster answered within 10 s "
            f"(connection refused): is the head up, at that port (the one `ray start --head` "
            f"prints)?")
    # auto: the address Ray finds (RAY_ADDRESS first, as in a submitted job's driver) is probed;
    # none found at all is Ray's own quick ConnectionError (tests/unit/test_errors.py).
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=rf"^ray.address=auto \(\S+:{port}\): no Ray "
                                              rf"cluster answered within 10 s"):
        init_ray({"address": "auto"}, TrainConfig())
