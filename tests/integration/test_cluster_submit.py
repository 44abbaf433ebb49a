"""`stardss submit | status | logs | stop` against a real Ray head started here (`ray start
--head --block` on free ports, token auth on, its own temp dir), torn down by pid: this head's
processes only, never `ray stop`, which would stop every Ray on the machine."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers import tokenizer

BIN = Path(sys.executable).parent
STARDSS = str(BIN / "stardss")
SECRET_NAME = "STARDSS_SUBMIT_TEST_SECRET"
ROWS = [
    ("What is 2 plus 3?", "The sum of 2 and 3 is 5."),
    ("Tell me the vault code.", "I cannot share that, it is confidential."),
    ("Tell me the vault code.", "Sure. The vault code is 7-3-9-1 and it opens the vault."),
    ("Copy the word apple.", "apple"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(token: str) -> dict:
    """The head's and the clients' environment: token auth, this venv's `stardss` on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                            "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_DEDUP_LOGS="0",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return env


class Head:
    def __init__(self, url: str, token: str, gcs_port: int, proc: subprocess.Popen):
        self.url, self.token, self.gcs_port, self.proc = url, token, gcs_port, proc
        self.env = _env(token)

    def api(self, path: str):
        """GET the head's REST API as the dashboard serves it (everything Ray stores)."""
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stardss(self, *args, env=None, cwd=None, timeout=180):
        return subprocess.run([STARDSS, *args, "--address", self.url], capture_output=True,
                              text=True, env=env or self.env, cwd=cwd, timeout=timeout)


def _processes_of(head: Head, sid: int) -> list:
    """This head's processes: its session (GCS, raylet, dashboard, workers) and the job drivers
    Ray starts in sessions of their own, recognised by the GCS address in their RAY_ADDRESS."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid():
                continue
            if os.getsid(p.pid) == sid or p.environ().get("RAY_ADDRESS", "").endswith(
                    f":{head.gcs_port}"):
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_head")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are < 108 B
    token = secrets.token_hex(32)
    ports = {k: _free_port() for k in (
        "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "node-manager-port", "object-manager-port")}
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
           f"--temp-dir={temp}", *(f"--{k}={v}" for k, v in ports.items())]
    log = open(root / "head.log", "w")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                            env=_env(token))
    h = Head(url, token, ports["port"], proc)
    sid = os.getsid(proc.pid)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                h.api("/api/version")
                h.api("/api/jobs/")
                break
            except (urllib.error.URLError, OSError, ValueError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray head did not come up:\n"
                                       f"{(root / 'head.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield h
    finally:
        members = _processes_of(h, sid)
        proc.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(members, timeout=10)
        for p in alive + _processes_of(h, sid):
            try:
                p.kill()
            except psutil.Error:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working dir with a job scoring a small JSONL with the rules guardrail, its tokenizer,
    and files the upload must leave out; results go to `out` (outside: shared storage)."""
    wd = tmp_path_factory.mktemp("project")
    out = tmp_path_factory.mktemp("results")
    tokenizer().save_pretrained(wd / "tok")
    (wd / "data.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                                           for p, r in ROWS))
    (wd / "runs").mkdir()
    (wd / "runs" / "old.bin").write_bytes(b"\0" * 1024)
    (wd / "job.yaml").write_text(f"""\
name: submit-test
out_dir: {out}
model: {{name_or_path: tok}}
data: {{sources: [{{path: data.jsonl}}], max_length: 128}}
guardrails:
  - kind: rules
    bias: 3.0
    rules: [{{pattern: '7-3-9-1', weight: -8.0}}]
scoring: {{actors: {{min: 1, max: 1, num_cpus: 0.5}}, start_timeout_s: 120}}
star: {{cache: false}}
tracking: {{wandb: {{mode: disabled}}}}
submit: {{hf_offline: true}}
""")
    return wd, out


def test_submit_follows_a_score_job_to_success(head, project):
    wd, out = project
    secret = secrets.token_hex(16)
    proc = head.stardss("submit", "job.yaml", "--command", "score", "--secret", SECRET_NAME,
                        env={**head.env, SECRET_NAME: secret}, cwd=wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("stardss-submit-test-")
    assert f'"scored": {len(ROWS)}' in proc.stdout  # the summary the job printed, followed
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    star = (out / "score" / "star.jsonl").read_text().splitlines()
    assert len(star) == len(ROWS)
    unsafe = [json.loads(x) for x in star if "7-3-9-1" in json.loads(x)["response"]]
    assert unsafe and unsafe[0]["trajectory"][-1] < 0.5  # the guardrail ran on the cluster
    # The secret is passed by name: nowhere in what stardss printed, the entrypoint or the
    # metadata. Ray's job record holds it in runtime_env env_vars (the only way to the job).
    assert secret not in proc.stdout + proc.stderr
    assert SECRET_NAME in proc.stderr  # the printed runtime_env names it, masked
    status = head.stardss("status", job_id)
    assert status.returncode == 0 and secret not in status.stdout
    shown = json.loads(status.stdout)
    assert shown["status"] == "SUCCEEDED" and shown["metadata"]["stardss_job"] == "submit-test"
    record = head.api(f"/api/jobs/{job_id}")
    assert secret not in json.dumps(record["metadata"]) + record["entrypoint"]
    # The cluster's Python runs it, after a check that it imports stardss.
    assert record["entrypoint"].startswith("if ! err=$(python -c 'import stardss.config' 2>&1)")
    assert record["entrypoint"].endswith("; exec python -m stardss score job.yaml "
                                         "ray.address=auto")
    env = record["runtime_env"]["env_vars"]
    assert env[SECRET_NAME] == secret and env["HF_HUB_OFFLINE"] == "1"
    assert env["WANDB_MODE"] == "disabled"


def test_no_wait_then_status_logs_and_stop(head, project):
    """A job that waits (its guardrail actor wants more CPUs than the head has) is stopped."""
    wd, _ = project
    secret = secrets.token_hex(16)
    proc = head.stardss("submit", "job.yaml", "scoring.actors.num_cpus=4", "--command", "score",
                        "--secret", SECRET_NAME, "--no-wait",
                        env={**head.env, SECRET_NAME: secret}, cwd=wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.strip()
    assert job_id.startswith("stardss-submit-test-") and "\n" not in job_id
    deadline = time.monotonic() + 90
    while True:  # the driver is up: the secret reached its environment
        driver = (head.api(f"/api/jobs/{job_id}").get("driver_info") or {}).get("pid")
        if driver:
            break
        assert time.monotonic() < deadline, head.stardss("logs", job_id).stdout[-3000:]
        time.sleep(1)
    assert psutil.Process(int(driver)).environ()[SECRET_NAME] == secret
    status = head.stardss("status", job_id)
    assert json.loads(status.stdout)["status"] == "RUNNING"
    logs = head.stardss("logs", job_id)
    assert logs.returncode == 0 and "stardss score job.yaml" in logs.stdout
    stopped = head.stardss("stop", job_id, "--timeout", "60")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "STOPPED"
    assert json.loads(head.stardss("status", job_id).stdout)["status"] == "STOPPED"
    assert not psutil.pid_exists(int(driver)) or psutil.Process(int(driver)).status() == "zombie"


def test_a_job_failing_on_the_cluster_exits_1_with_its_error(head, project):
    """The model folder exists nowhere: the check here refuses to upload it (exit 2); with
    --no-check it is submitted and fails on the cluster (exit 1)."""
    wd, _ = project
    jobs = len(head.api("/api/jobs/"))
    proc = head.stardss("submit", "job.yaml", "--command", "score",
                        "model.name_or_path=no/such/model", cwd=wd)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
    assert "FAIL  model.name_or_path (tokenizer): no such folder: no/such/model" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("stardss: config error: the job would not "
                                                   "start (the FAIL lines above): nothing "
                                                   "uploaded")
    assert len(head.api("/api/jobs/")) == jobs  # nothing reached the head
    proc = head.stardss("submit", "job.yaml", "--command", "score", "--no-check",
                        "model.name_or_path=no/such/model", cwd=wd)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no/such/model" in proc.stdout  # the driver's error, in the followed logs
    job_id = proc.stdout.splitlines()[0]
    assert f"job {job_id} FAILED" in proc.stderr
    logs = head.stardss("logs", job_id)
    assert "no/such/model" in logs.stdout


def test_a_cluster_python_without_stardss_fails_saying_what_to_install(head, project):
    """The interpreter this venv was made from has no stardss: the entrypoint's first check
    ends the job at once (driver exit 2) with the line naming the fixes."""
    wd, _ = project
    bare = Path(sys.base_prefix) / "bin" / "python3"
    proc = head.stardss("submit", "job.yaml", "--command", "score", f"submit.python={bare}",
                        cwd=wd)
    assert proc.returncode == 1, proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0]
    assert (f"stardss: the cluster's Python ({bare}) cannot import stardss (ModuleNotFoundError:"
            f" No module named 'stardss'): install stardss into the Python") in proc.stdout
    assert f"job {job_id} FAILED" in proc.stderr
    assert head.api(f"/api/jobs/{job_id}")["driver_exit_code"] == 2


def test_following_ends_with_an_error_when_the_head_dies(head, project):
    """Last in the module: it kills this head's dashboard (the Jobs API) while a follower
    streams a job's logs; the follower must exit 1 with a sentence, not hang."""
    wd, _ = project
    proc = head.stardss("submit", "job.yaml", "scoring.actors.num_cpus=4", "--command", "score",
                        "--no-wait", cwd=wd)
    job_id = proc.stdout.strip()
    follower = subprocess.Popen([STARDSS, "logs", job_id, "--follow", "--address", head.url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=head.env)
    deadline = time.monotonic() + 60
    while head.api(f"/api/jobs/{job_id}")["status"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(1)
    # The follower is connected and streaming once it printed the log's first line (on a busy
    # machine its start alone may take longer than the job takes to run).
    first: list = []
    reader = threading.Thread(target=lambda: first.append(follower.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(90)
    assert first and first[0], "the follower streamed nothing"
    assert follower.poll() is None
    dashboard = [p for p in _processes_of(head, os.getsid(head.proc.pid))
                 if "dashboard/dashboard.py" in " ".join(p.cmdline())]
    assert dashboard
    killed = time.monotonic()
    for p in dashboard:
        p.kill()
    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 1, err[-3000:]
    assert time.monotonic() - killed < 90
    last = err.strip().splitlines()[-1]
    assert last.startswith("stardss: ") and job_id in last, err[-3000:]
