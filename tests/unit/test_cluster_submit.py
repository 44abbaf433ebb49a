"""`stardss submit` without a cluster: the job is validated and the submission (runtime_env,
entrypoint, metadata) built locally; secrets come from the environment by name only."""
import json
import shlex
import socket
import time

import pytest
from ray.runtime_env import RuntimeEnv

from stardss import cli
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


def test_entrypoint_is_shell_quoted_and_joins_the_cluster(project):
    overrides = ["data.sources=[{path: 'my data.jsonl'}]", "name=it's; rm -rf ~"]
    sub = _prepare(project, *overrides, command="train", submission_id="mine")
    assert shlex.split(sub.entrypoint) == ["stardss", "train", "job.yaml", *overrides,
                                           "ray.address=auto"]
    assert sub.submission_id == "mine"
    (project / "jobs").mkdir()
    (project / "job.yaml").rename(project / "jobs" / "j.yaml")
    sub = sm.prepare(str(project / "jobs" / "j.yaml"), working_dir=str(project), environ={})
    assert shlex.split(sub.entrypoint)[2] == "jobs/j.yaml"  # relative to the working dir


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
    monkeypatch.setattr(sm, "REQUEST_TIMEOUT_S", 1.0)
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
