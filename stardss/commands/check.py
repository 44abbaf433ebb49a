"""`stardss check JOB [overrides]`: would `stardss train` start with this job? In seconds, training
nothing: every input a run reads is opened and tried the way the run would try it, and each
check prints one line, so a user sees every problem at once instead of the first one minutes
into a run.

    ok    data.sources[0] finetune: 100 rows read, 0 bad
    FAIL  model.name_or_path: no such folder: runs/demo/aligned/model ...
    note  eval.sets: none configured (eval is optional)

Exit code 0 only when a run would start (no FAIL), 2 otherwise (a user error, as the CLI's).
The config itself was validated by load_job before this runs.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Optional

from ..config.schema import GuardrailConfig, JobConfig, SourceConfig
from ..data.rows import BadRow
from ..data.tokenizer import MODEL_FILES, TOKENIZER_FILES

EXAMPLES = 3
"""Bad rows of a source quoted under its line (the rest are counted by reason only)."""
HUB_TIMEOUT_S = 10.0
"""Longest the one Hub question (does the repo hold config.json?) may take when online."""


@dataclass
class Check:
    status: str
    """ok | FAIL | note (a note never fails the check)."""
    what: str
    """The key (and name) the line is about, e.g. data.sources[0] finetune."""
    detail: str
    extra: tuple[str, ...] = ()
    """Indented lines under it (bad-row examples)."""

    def lines(self) -> list[str]:
        return [f"{self.status:<5} {self.what}: {self.detail}", *(f"        {x}" for x in
                                                                   self.extra)]


def _ok(what: str, detail: str, *extra: str) -> Check:
    return Check("ok", what, detail, extra)


def _fail(what: str, detail: str, *extra: str) -> Check:
    return Check("FAIL", what, detail, extra)


def resolve_pretrained(key: str, name: str, revision: Optional[str],
                       files: tuple[str, ...]) -> Check:
    """`data.tokenizer.locate_model` as a check line; online, a Hub id that is not cached is
    asked for on the Hub (one bounded call), since a run would download it."""
    from ..data.tokenizer import locate_model

    loc = locate_model(key, name, revision, files)
    if loc.downloads:
        return _ask_hub(key, name, revision, files[0], loc.detail)
    return (_ok if loc.found else _fail)(key, loc.detail)


def _ask_hub(key: str, name: str, revision: Optional[str], filename: str,
             missing: str) -> Check:
    """Online and not cached: a run would download it, if the Hub has it and lets us."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # no network, no such repo, gated: all say why it would not load
        return _fail(key, f"{missing}; asking the Hub failed: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}")
    if not any(s.rfilename == filename for s in info.siblings or ()):
        return _fail(key, f"Hub repo {name} has no {filename}")
    return _ok(key, f"Hub id {name} not cached; a run downloads it from the Hub")


def check_model(job: JobConfig, weights: bool = True) -> tuple[list[Check], object]:
    """The trainee (unless not `weights`: `stardss score` reads the tokenizer only) and its
    tokenizer resolve, and the tokenizer loads (rows are rendered with it); returns the checks
    and the tokenizer (None when it did not load)."""
    model = job.model
    checks = [resolve_pretrained("model.name_or_path", model.name_or_path, model.revision,
                                 MODEL_FILES)] if weights else []
    tok_key = "model.tokenizer" if model.tokenizer else "model.name_or_path"
    tok_path = model.tokenizer or model.name_or_path
    if checks and tok_path == model.name_or_path and checks[0].status != "ok":
        return checks, None  # the same folder or id: one line says what is missing
    found = resolve_pretrained(tok_key, tok_path, model.revision, TOKENIZER_FILES)
    if found.status != "ok":
        found.what = f"{tok_key} (tokenizer)"
        return [*checks, found], None
    from ..data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(tok_path, model.revision, model.chat_template)
    except Exception as err:  # a broken folder, no chat template: the run would stop here
        return [*checks, _fail(f"{tok_key} (tokenizer)", f"cannot load {tok_path}: "
                                                         f"{type(err).__name__}: {err}")], None
    return [*checks, _ok(f"{tok_key} (tokenizer)", f"{found.detail}: loads, {len(tokenizer)} "
                                                   f"tokens, with a chat template")], tokenizer


def check_source(i: int, src: SourceConfig, job: JobConfig, tokenizer, rows: int) -> Check:
    """The first `rows` records of a training source validated as a run validates them
    (parse, render, tokenise within data.max_length), counting what it would quarantine."""
    from ..data.format import encode_row
    from ..data.rows import parse_row
    from ..data.sources import read_source, source_name

    name = source_name(src)
    what = f"data.sources[{i}] {name}"
    good, bad, examples = 0, Counter(), []
    try:
        for index, raw in islice(read_source(src, job.seed), rows):
            try:
                if isinstance(raw, BadRow):
                    raise raw
                row = parse_row(raw, name, index)
                if tokenizer is not None:
                    encode_row(tokenizer, row, job.data.max_length, job.data.train_turns)
                good += 1
            except BadRow as err:
                bad[err.kind] += 1
                if len(examples) < EXAMPLES:
                    examples.append(f"row {err.row}: {err.reason}")
    except (OSError, ValueError) as err:  # missing file, unreadable format, missing column
        return _fail(what, str(err))
    except Exception as err:  # e.g. datasets' own errors for a Hub id: name the type too
        return _fail(what, f"{type(err).__name__}: {err}")
    total = good + sum(bad.values())
    if total == 0:
        return _fail(what, f"0 rows read from {src.path}")
    reasons = ", ".join(f"{k} {n}" for k, n in sorted(bad.items()))
    detail = (f"{total} rows read, {sum(bad.values())} bad" + (f" ({reasons})" if bad else "")
              + ("" if tokenizer is not None else "; not tokenised (no tokenizer)"))
    if bad and job.data.on_bad_row == "error":
        return _fail(what, f"{detail}; data.on_bad_row=error stops the run at the first one "
                           f"(or set data.on_bad_row=quarantine)", *examples)
    if good == 0:
        return _fail(what, f"{detail}; no usable rows", *examples)
    note = "; a run quarantines them" if bad else ""
    return _ok(what, detail + note, *examples)


def check_eval_set(i: int, cfg, job: JobConfig) -> Check:
    from ..eval.sets import load_set, set_name

    what = f"eval.sets[{i}] {set_name(cfg)}"
    try:
        loaded = load_set(cfg, seed=job.seed)
    except (OSError, ValueError) as err:  # EvalSetError, FileNotFoundError, a bad record
        return _fail(what, str(err))
    if not loaded.items:
        return _fail(what, f"0 items read from {cfg.path}")
    notes = f"; {'; '.join(loaded.notes)}" if loaded.notes else ""
    return _ok(what, f"{len(loaded.items)} items (format {loaded.format}){notes}")


def check_guardrail(i: int, cfg: GuardrailConfig) -> Check:
    """Model guardrails: the weights' folder or Hub id resolves (loading them is the pool's
    work, minutes on a GPU); rules: built, so every pattern compiles."""
    from ..guard.registry import build_guardrail, guard_kind

    what = f"guardrails[{i}] {cfg.kind}"
    if cfg.kind == "remote":
        return check_remote_guardrail(what, cfg)
    if guard_kind(cfg.kind).needs_model:
        found = resolve_pretrained(f"{what} name_or_path", cfg.name_or_path or "",
                                   cfg.revision, MODEL_FILES)
        return found
    try:
        build_guardrail(cfg)
    except ValueError as err:
        return _fail(what, str(err))
    return _ok(what, f"{len(cfg.rules)} rules compile")


def check_remote_guardrail(what: str, cfg: GuardrailConfig) -> Check:
    """A guard behind a server: its tokenizer resolves here, and the guardrail is built, which
    renders the family's format with it, checks the labels in context and asks the server
    which models it serves (one GET, bounded by server.timeout_s): no scoring request."""
    from ..guard.registry import build_guardrail

    found = resolve_pretrained(f"{what} name_or_path", cfg.name_or_path or "", cfg.revision,
                               TOKENIZER_FILES)
    if found.status != "ok":
        return found
    try:
        guard = build_guardrail(cfg)
    except (OSError, ValueError, RuntimeError) as err:  # HttpError is a RuntimeError
        return _fail(what, str(err))
    return _ok(what, f"{cfg.server.base_url} serves {cfg.server.model}; format "
                     f"{guard.format.variant}, labels {guard.format.safe_label!r} / "
                     f"{guard.format.unsafe_label!r} (tokenizer {cfg.name_or_path})")


def check_needs(job: JobConfig, command: str = "train") -> list[Check]:
    """The lists a training run (or `command`) needs are not empty (config.validate.
    command_problems, what `stardss train` checks before it starts); eval is optional (a note),
    but an eval section that is there must be complete."""
    from ..config.validate import command_problems

    problems = command_problems(job, command)
    if job.eval.sets:
        problems += command_problems(job, "eval")
    checks = [_fail(*str(p).split(": ", 1)) for p in problems]
    if not job.eval.sets:
        checks.append(Check("note", "eval.sets", "none configured (eval is optional)"))
    return checks


def check_cluster(job: JobConfig) -> Check:
    """On a cluster (ray.address): it answers, and its nodes allow the job's placement."""
    import ray

    from ..cluster.placement import check_placement
    from ..cluster.resources import init_ray
    from ..train.kinds import loss_kind

    what = f"ray.address {job.ray['address']}"
    started = not ray.is_initialized()
    try:
        init_ray(job.ray, job.train)
    except Exception as err:  # ConnectionError, a timeout: the run could not start either
        return _fail(what, f"does not answer: {type(err).__name__}: {err}")
    try:
        check_placement(job.train, job.scoring, loss_kind(job.loss.kind).uses_guardrails)
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    except ValueError as err:  # PlacementError
        return _fail(what, str(err))
    finally:
        if started:
            ray.shutdown()
    return _ok(what, f"{alive} nodes alive; placement allowed")


def _elsewhere(what: str, path: Optional[str]) -> Optional[Check]:
    """Checked here for a run on a cluster: an absolute path this machine does not have is the
    cluster's storage (a note: the cluster's run checks it), not a failure."""
    if path and os.path.isabs(path) and not os.path.exists(path):
        return Check("note", what, f"{path} is not on this machine; not checked here (the "
                                   f"cluster must have it)")
    return None


def run_check(job: JobConfig, *, rows: int = 100, echo: Callable[[str], None] = print,
              for_cluster: bool = False, command: str = "train") -> int:
    """The `check` command: every check's line and a summary on stdout; 0 when a run would
    start, 2 otherwise. `rows`: records validated per data source. `for_cluster`: run here
    before `stardss submit` uploads the job: only what is true on this machine is checked (the
    cluster's placement and absolute paths missing here are left to the run on the cluster).
    `command`: train, or score (no model weights are read)."""
    from ..cluster.resources import on_cluster

    def away(what: str, path: Optional[str]) -> Optional[Check]:
        return _elsewhere(what, path) if for_cluster else None

    checks = [_ok("config", f"job {job.name!r} valid (loss.kind={job.loss.kind})")]
    checks += check_needs(job, command)
    model_away = (away("model.name_or_path", job.model.name_or_path)
                  or away("model.tokenizer", job.model.tokenizer))
    model_checks, tokenizer = (([model_away], None) if model_away
                               else check_model(job, weights=command == "train"))
    checks += model_checks
    checks += [away(f"data.sources[{i}]", s.path) or check_source(i, s, job, tokenizer, rows)
               for i, s in enumerate(job.data.sources)]
    checks += [away(f"guardrails[{i}] {g.kind}", g.name_or_path) or check_guardrail(i, g)
               for i, g in enumerate(job.guardrails)]
    checks += [away(f"eval.sets[{i}]", s.path) or check_eval_set(i, s, job)
               for i, s in enumerate(job.eval.sets)]
    if on_cluster(job.ray) and not for_cluster:
        checks.append(check_cluster(job))
    for check in checks:
        for line in check.lines():
            echo(line)
    failed = sum(c.status == "FAIL" for c in checks)
    counted = sum(c.status != "note" for c in checks)
    if failed:
        echo(f"check: {failed} of {counted} checks failed: a run would not start")
        return 2
    echo(f"check: all {counted} checks ok: a run would start")
    return 0
