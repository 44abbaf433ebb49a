"""`stardss submit | status | logs | stop`: jobs on a Ray cluster through Ray's Jobs API.

`submit` validates the job here (a config error fails now, naming the key; the command layer
passes `stardss check` in, so bad rows or a missing model fail before the upload), uploads the
working dir and runs `python -m stardss <command> <job> <overrides> ray.address=auto` there with
the cluster's Python (submit.python), the driver joining the cluster it runs on; a Python that
cannot import stardss ends the job at once with a line saying what to install.
Secrets go by name (`--secret NAME`, `submit.secrets`): read from this
environment at submit time into the job's runtime_env env_vars, never written into the job, its
entrypoint or metadata, never printed. Ray keeps runtime_env in its job record, readable through
the head's dashboard / Jobs API: keep its token auth on. The Jobs SDK sets no timeout on its
HTTP calls; every call here has one, so a dead or hung head ends a command with a sentence.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets as _random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from omegaconf import OmegaConf

from .. import __version__
from ..config import ConfigError, JobConfig, load_job, to_dict
from ..config.validate import validate_secret_name
from ..demo.config import DemoJobConfig
from ..tracking import SECRET_MARK, redact
from .jobs import (
    REQUEST_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ClusterError,
    bounded,
    connect,
    follow,
    status,
    stop,
)

COMMANDS = ("train", "score", "eval", "demo")
UPLOAD_TIMEOUT_S = 900.0  # the submit call, which uploads the working dir
MAX_UPLOAD = 512 * 1024**2  # Ray refuses a working_dir package this large (its gRPC limit)
# Left out of every upload, on top of submit.excludes and the folder's .gitignore/.rayignore.
DEFAULT_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache",
                    ".mypy_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
                    "*.egg-info", "/runs", "/wandb", "/build", "/dist"]
# ray.init refuses these when it joins an existing cluster, which the job's driver does.
CONNECT_FORBIDDEN = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory",
                     "_system_config")


class CheckFailed(ConfigError):
    """The job would not start (`stardss check`, run here before the upload, failed)."""


@dataclass
class Submission:
    """Everything `submit` sends; built locally by `prepare`, without the cluster."""

    entrypoint: str
    runtime_env: dict
    metadata: dict
    submission_id: str
    secret_names: list = field(default_factory=list)
    upload: dict = field(default_factory=dict)  # uploaded file (relative posix path) -> bytes
    notes: list = field(default_factory=list)  # warnings for the submitter

    def shown(self) -> dict:
        """What may be printed: secret values masked (and anything secret-shaped)."""
        env = {k: SECRET_MARK if k in self.secret_names else v
               for k, v in self.runtime_env.get("env_vars", {}).items()}
        runtime_env = {**self.runtime_env, "env_vars": env,
                       "excludes": " ".join(self.runtime_env.get("excludes", []))}
        return redact({"submission_id": self.submission_id, "entrypoint": self.entrypoint,
                       "runtime_env": runtime_env, "metadata": self.metadata})


def prepare(job_file: str, overrides: Iterable[str] = (), *, command: str = "train",
            working_dir: Optional[str] = None, secrets: Iterable[str] = (),
            submission_id: Optional[str] = None,
            environ: Optional[Mapping[str, str]] = None,
            check: Optional[Callable[[JobConfig, str], int]] = None) -> Submission:
    """Validate the job as the cluster will load it and build the submission.

    The job is loaded from inside the working dir (default: the current one), where its
    relative paths resolve on the cluster too; it must lie inside it. Secrets are read from
    `environ` (default os.environ); a missing one is an error naming it. `check(job,
    command)` (the command layer's `stardss check`, which prints its own lines) runs last, in
    the working dir, for train and score; nonzero: CheckFailed, nothing is uploaded."""
    from ..config.validate import COMMAND_NEEDS, validate_for
    from .resources import DRIVER_ENV  # the variables the driver's init_ray sets itself

    environ = os.environ if environ is None else environ
    overrides = list(overrides)
    if command not in COMMANDS:
        raise ConfigError(f"--command: {command!r} is not one of {', '.join(COMMANDS)}")
    for item in overrides:
        key, _, value = item.partition("=")
        names_only = key.startswith("submit.secrets")  # names, checked when the job loads
        if not names_only and redact({key: value}) != {key: value}:
            raise ConfigError(f"{key}: looks like a secret, and overrides are stored in the "
                              f"job's entrypoint; pass it by name with --secret NAME")
    wd = Path(working_dir or os.getcwd()).resolve()
    if not wd.is_dir():
        raise ConfigError(f"--working-dir: {wd} is not a folder")
    job_path = Path(job_file).resolve()
    if not job_path.is_relative_to(wd):
        raise ConfigError(f"job file {job_file} is outside the working dir {wd}, which is all "
                          f"the cluster gets: move it in or pass --working-dir")
    rel = job_path.relative_to(wd).as_posix()
    cluster_overrides = [*overrides, "ray.address=auto"]
    before = os.getcwd()
    os.chdir(wd)  # relative paths resolve as they will on the cluster
    try:
        job = load_job(rel, cluster_overrides, schema=DemoJobConfig if command == "demo"
                       else JobConfig)
    finally:
        os.chdir(before)
    if command in COMMAND_NEEDS:
        validate_for(job, command)
    ray_kwargs = dict(job.ray)
    for key in CONNECT_FORBIDDEN:
        if key in ray_kwargs:
            raise ConfigError(f"ray.{key}: the job joins the running cluster (ray.address=auto)"
                              f", and ray.init refuses {key} then")
    sub, job_env_rt = job.submit, dict(ray_kwargs.get("runtime_env") or {})
    job_env = dict(job_env_rt.get("env_vars") or {})

    names = list(dict.fromkeys([*sub.secrets, *secrets]))
    for name in secrets:
        validate_secret_name("--secret", name)
    values = {}
    for name in names:
        if not environ.get(name):
            raise ConfigError(f"secret {name}: not set in this environment; export it before "
                              f"submitting (its value is read here, never from the job)")
        values[name] = environ[name]
    env = {"WANDB_MODE": str(job.tracking.wandb.mode)}
    if sub.hf_offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env = {k: v for k, v in env.items() if k not in job_env}  # the job's own value applies
    for name in [*sub.env_vars, *values]:
        where = "submit.env_vars" if name in sub.env_vars else "secret"
        if name in job_env or name in DRIVER_ENV:  # Ray refuses a driver env var set twice
            raise ConfigError(f"{where} {name}: also set by the job's driver (ray.runtime_env."
                              f"env_vars or stardss itself); set it in one place")
    env.update({k: str(v) for k, v in sub.env_vars.items()})
    env.update(values)

    excludes = [*DEFAULT_EXCLUDES, *sub.excludes]
    runtime_env = {"working_dir": str(wd), "excludes": excludes, "env_vars": env}
    upload = upload_files(wd, excludes)
    reqs = list(sub.pip)
    if sub.install == "working_dir":
        extras = f"[{','.join(sub.extras)}]" if sub.extras else ""
        # Ray expands the variable to the unpacked working dir; the content tag keys Ray's
        # per-node cache of the environment (its pip plugin hashes the spec text only).
        stamp = sorted((p, n, (wd / p).stat().st_mtime_ns) for p, n in upload.items())
        tag = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:12]
        reqs.insert(0, f"${{RAY_RUNTIME_ENV_CREATE_WORKING_DIR}}{extras} # {tag}")
    if reqs:
        runtime_env[sub.installer] = reqs
    for key in runtime_env:
        if key != "env_vars" and key in job_env_rt:
            raise ConfigError(f"ray.runtime_env.{key}: stardss submit sets the job's {key}; "
                              f"remove it from the job (see the submit section)")

    notes = _check_upload(job, wd, rel, upload, names)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(job.name)).strip("-") or "job"
    sid = submission_id or f"stardss-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{_random.token_hex(2)}"
    if check is not None and command in ("train", "score"):
        os.chdir(wd)
        try:
            failed = check(job, command)
        finally:
            os.chdir(before)
        if failed:
            raise CheckFailed("the job would not start (the FAIL lines above): nothing uploaded;"
                              " fix them, or submit anyway with --no-check")
    return Submission(
        entrypoint=entrypoint(sub.python, [command, rel, *cluster_overrides]),
        runtime_env=runtime_env, submission_id=sid, secret_names=names, upload=upload,
        metadata={"stardss_job": str(job.name), "stardss_command": command,
                  "stardss_job_file": rel, "stardss_version": __version__},
        notes=notes)


def entrypoint(python: str, args: list[str]) -> str:
    """The job's shell command: `python -m stardss ARGS` with the cluster's Python, after a
    check that it imports stardss (else exit 2 with one line saying what to install: a bare
    `stardss` script is not on the PATH of a head started from a venv that was not activated,
    which ended in `/bin/sh: stardss: not found` after the whole upload)."""
    py = shlex.quote(python)
    fix = ("install stardss into the Python the cluster runs (its image, or the venv its ray start "
           "ran from, then set submit.python to that venv's bin/python), or let Ray install it "
           "for the job: submit.install=working_dir (a stardss checkout) or submit.pip")
    return (f"if ! err=$({py} -c 'import stardss.config' 2>&1); then echo \"stardss: the "
            f"cluster's Python ({python}) cannot import stardss ($(printf '%s' \"$err\" | "
            f"tail -n 1)): {fix}\" >&2; exit 2; fi; exec {py} -m stardss {shlex.join(args)}")


def upload_files(wd: Path, excludes: list[str]) -> dict[str, int]:
    """The files Ray will upload from `wd` (relative path -> size), found by Ray's own walk:
    `excludes` plus .gitignore (unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and .rayignore."""
    # Private helpers of the pinned Ray (2.60): the exact rules its upload applies.
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: dict[str, int] = {}

    def add(p: Path) -> None:
        if p.is_file():
            files[p.relative_to(wd).as_posix()] = p.stat().st_size

    gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    quiet = logging.getLogger("stardss.upload")  # Ray logs each ignore file it reads
    quiet.setLevel(logging.WARNING)
    _dir_travel(wd, [_get_excludes(wd, excludes)], add, include_gitignore=gitignore,
                logger=quiet)
    return files


def _check_upload(job, wd: Path, rel: str, upload: dict[str, int], secrets: list) -> list:
    """Errors for an upload that cannot work; notes for paths that will be missing."""
    for part in _job_files(wd / rel):
        part_rel = part.relative_to(wd).as_posix() if part.is_relative_to(wd) else None
        if part_rel not in upload:
            raise ConfigError(f"job file {part_rel or part} is not in the upload (outside the "
                              f"working dir or excluded by submit.excludes/.gitignore/.rayignore)")
    total = sum(upload.values())
    if total >= MAX_UPLOAD:
        big = sorted(upload.items(), key=lambda kv: -kv[1])[:5]
        raise ConfigError(f"--working-dir: {wd} would upload {total / 2**20:.0f} MiB, Ray's "
                          f"limit is {MAX_UPLOAD / 2**20:.0f} MiB; largest: "
                          + ", ".join(f"{p} ({s / 2**20:.0f} MiB)" for p, s in big)
                          + "; exclude them (submit.excludes, .rayignore) or use shared storage")
    notes = []
    for key, value in _strings(to_dict(job)):
        path = os.path.normpath(value)
        if (key == "out_dir" or path == "." or os.path.isabs(path) or "\n" in value
                or not (wd / path).exists()):
            continue
        if not any(f == path or f.startswith(path + "/") for f in upload):
            notes.append(f"{key}: {value} exists here but is not uploaded (excluded); the job "
                         f"sees it only if it creates it")
    if not os.path.isabs(str(job.out_dir)):
        notes.append(f"out_dir: {job.out_dir} is relative, so results land in the job's "
                     f"temporary working dir on the cluster; set it to shared storage to keep them")
    if job.tracking.wandb.mode == "online" and "WANDB_API_KEY" not in secrets:
        notes.append("tracking.wandb.mode: online, but WANDB_API_KEY is not passed (--secret)")
    return notes


def _job_files(path: Path) -> list[Path]:
    """The job file and the files its `defaults` name (relative to it), recursively."""
    out, todo = [], [path.resolve()]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        parts = OmegaConf.load(p).get("defaults", []) if p.is_file() else []
        todo += [(p.parent / x).resolve() for x in parts if isinstance(x, str)]
    return out


def _strings(obj, key: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(obj, str) and obj:
        yield key, obj


def run_cli(args, check: Optional[Callable[[JobConfig, str], int]] = None) -> int:
    """The submit / status / logs / stop commands (arguments parsed by stardss/cli.py);
    `check`: see prepare (None with --no-check). A config error or a failed check exits 2, the
    head refusing, failing or not answering 1 (one line each)."""
    err = sys.stderr
    try:
        if args.command == "submit":
            sub = prepare(args.job, args.overrides, command=args.run, secrets=args.secret,
                          working_dir=args.working_dir, submission_id=args.submission_id,
                          check=check)
            for note in sub.notes:
                print(f"stardss submit: note: {note}", file=err)
            size = sum(sub.upload.values()) / 2**20
            print(f"stardss submit: {len(sub.upload)} files ({size:.1f} MiB) from "
                  f"{sub.runtime_env['working_dir']}\n{json.dumps(sub.shown(), indent=1)}",
                  file=err)
        client = connect(args.address)
        if args.command == "submit":
            job_id = bounded("submit", UPLOAD_TIMEOUT_S, client.submit_job,
                             entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                             metadata=sub.metadata, submission_id=sub.submission_id)
            print(job_id, flush=True)
            if args.no_wait:
                print(f"stardss submit: follow with `stardss logs {job_id} --follow`", file=err)
                return 0
        else:
            job_id = args.job_id
        if args.command == "status":
            print(json.dumps(status(client, job_id), indent=1, default=str))
            return 0
        if args.command == "stop":
            st = stop(client, job_id, args.timeout or STOP_TIMEOUT_S)
            print(json.dumps(st, indent=1, default=str))
            return 0 if st["status"] == "STOPPED" else 1
        if args.command == "logs" and not args.follow:
            print(bounded(f"logs of {job_id}", REQUEST_TIMEOUT_S, client.get_job_logs, job_id),
                  end="")
            return 0
        try:
            final = follow(client, job_id, args.timeout)
        except KeyboardInterrupt:  # Ctrl-C stops following, not the job
            print(f"\nstardss: stopped following {job_id}; the job keeps running on the cluster"
                  f" (`stardss stop {job_id}` stops it)", file=err)
            return 130
        message = (status(client, job_id)["message"] or "").splitlines()  # Ray appends logs
        print(f"stardss: job {job_id} {final}: {message[0] if message else ''}", file=err)
        return 0 if final == "SUCCEEDED" else 1
    except ConfigError as e:
        print(f"stardss: config error: {e}", file=err)
        return 2
    except ClusterError as e:
        print(f"stardss: {e}", file=err)
        return 1
