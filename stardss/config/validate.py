"""A job's checks, before any work starts; every message starts with the key's name.

One walk over the fields (`fields.check_fields`) checks what each field declares: its choices,
its bounds, finite floats. What is left here is what one field alone cannot say: how keys
constrain each other, and what the stages' tables allow (the options each guardrail kind
reads, from stardss/guard/registry.py).
"""
from __future__ import annotations

import dataclasses
import os
import re

from ..guard.registry import COMMON, GUARD_KINDS, REMOTE_FAMILIES, authors_kinds
from ..train.kinds import loss_kind
from .evaluation import SET_COLUMNS
from .fields import ConfigError, check_fields
from .schema import CUSTOM_ONLY, GuardrailConfig
from .sources import ROW_FIELDS

__all__ = ["ConfigError", "validate", "validate_for", "validate_secret_name"]


def validate(job) -> None:
    """Raise ConfigError naming the first bad key of a typed job (JobConfig or a subclass)."""
    check_fields(job)
    validate_sources("data.sources", job.data.sources)
    validate_guardrails("guardrails", job.guardrails)
    validate_transform(job.star, job.guardrails)
    validate_combine(job.star, job.guardrails)
    validate_eval(job.eval)
    validate_scoring(job.scoring)
    validate_placement(job)
    validate_training(job)
    validate_submit(job.submit)


COMMAND_NEEDS = {"train": ("data", "guardrails"), "score": ("data", "guardrails"),
                 "eval": ("eval",), "demo": ("guardrails", "eval"),
                 "sweep": ("guardrails", "eval")}
"""What each command reads of a job, so an empty list it needs fails before any work starts
(a job file may leave out what its commands never read: an eval-only job has no data)."""


def validate_for(job, command: str) -> None:
    """Raise ConfigError naming the key when `command` needs a list the job leaves empty."""
    problems = command_problems(job, command)
    if problems:
        raise problems[0]


def command_problems(job, command: str) -> list[ConfigError]:
    """Every empty list `command` needs (what `stardss check` lists), each naming its key."""
    needs, found = COMMAND_NEEDS.get(command, ()), []
    if "data" in needs and not job.data.sources:
        found.append(ConfigError(f"data.sources: `stardss {command}` needs at least one data "
                                 f"source"))
    if "guardrails" in needs and not job.guardrails and (
            command == "score" or loss_kind(job.loss.kind).uses_guardrails):
        what = "scores prefixes" if command == "score" else f"loss.kind={job.loss.kind} needs STAR"
        found.append(ConfigError(f"guardrails: `stardss {command}` {what}: name at least one "
                                 f"guardrail"))
    if "eval" in needs:
        ev = job.eval
        if not ev.sets:
            found.append(ConfigError(f"eval.sets: `stardss {command}` needs at least one eval "
                                     f"set"))
        if any(s.task == "safety" for s in ev.sets) and not any(
                j.measures == "safety" for j in ev.judges):
            found.append(ConfigError("eval.judges: the safety sets need a safety judge (a "
                                     "guardrail or an openai judge with measures: safety)"))
    return found


def validate_sources(key: str, sources, fields: tuple = ROW_FIELDS) -> None:
    """Sources of a mixture (or eval sets: `fields` are then the item fields `columns` fills)."""
    ratios = [s.ratio for s in sources]
    if any(r is not None for r in ratios) and any(r is None for r in ratios):
        raise ConfigError(f"{key}: give every source a ratio or none")
    for i, src in enumerate(sources):
        where = f"{key}[{i}]"
        if src.subset is not None and src.kind in ("jsonl", "parquet", "toy"):
            raise ConfigError(f"{where}.subset: kind {src.kind} has no subsets (Hub datasets do)")
        for field_name, column in src.columns.items():
            if field_name not in fields:
                raise ConfigError(f"{where}.columns.{field_name}: not a field it fills (one of "
                                  f"{', '.join(fields)})")
            if not column:
                raise ConfigError(f"{where}.columns.{field_name}: name the column it comes from")
        for column, value in src.where.items():
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise ConfigError(f"{where}.where.{column}: must be one value to compare with "
                                  f"(string, number, bool or null), got {value!r}")
        if src.answer_regex is not None:
            _compiles(f"{where}.answer_regex", src.answer_regex)


def validate_guardrails(key: str, guards) -> None:
    defaults = {f.name: _default(f) for f in dataclasses.fields(GuardrailConfig)}
    for i, g in enumerate(guards):
        kind = GUARD_KINDS[g.kind]  # the walk has checked it is a registered kind
        if kind.needs_model and not g.name_or_path:
            raise ConfigError(f"{key}[{i}].name_or_path: kind={g.kind} needs a model id or "
                              f"folder")
        for name, default in defaults.items():
            if name not in COMMON and name not in kind.options and getattr(g, name) != default:
                raise ConfigError(f"{key}[{i}].{name}: kind={g.kind} does not read it (it reads "
                                  f"{', '.join(kind.options)}); remove it or change the kind")
        for j, rule in enumerate(g.rules):
            _compiles(f"{key}[{i}].rules[{j}].pattern", rule.pattern)
        if g.kind == "remote":
            _validate_remote(f"{key}[{i}]", g)


def _validate_remote(where: str, g) -> None:
    if g.family not in REMOTE_FAMILIES:
        raise ConfigError(f"{where}.family: kind=remote renders the prompt of the model the "
                          f"server runs; set it to one of {', '.join(REMOTE_FAMILIES)} (got "
                          f"{g.family!r})")
    if g.server is None:
        raise ConfigError(f"{where}.server: kind=remote needs the server (base_url, model, ...)")
    for name in ("base_url", "model"):
        if getattr(g.server, name) in (None, "", "???"):
            raise ConfigError(f"{where}.server.{name}: required for kind=remote")


def validate_combine(star, guards) -> None:
    """Per-guardrail weights are read by star.combine=weighted only, and must not all be 0."""
    for i, g in enumerate(guards):
        if star.combine != "weighted" and g.weight != 1.0:
            raise ConfigError(f"guardrails[{i}].weight: only star.combine=weighted reads it "
                              f"(star.combine={star.combine})")
    if star.combine == "weighted" and guards and sum(g.weight for g in guards) <= 0:
        raise ConfigError("guardrails[*].weight: star.combine=weighted needs a weight above 0")


def validate_transform(star, guards) -> None:
    """star.transform=authors reads the full-vocabulary logits at the label position: every
    guardrail must be a kind that has them (a causal LM, not rules or a classifier)."""
    if star.transform != "authors":
        return
    for i, g in enumerate(guards):
        if "authors" not in GUARD_KINDS[g.kind].transforms:
            raise ConfigError(f"star.transform: authors needs a guardrail's full-vocabulary "
                              f"logits; guardrails[{i}] (kind={g.kind}) has none (kinds that "
                              f"can: {', '.join(authors_kinds())}); use transform: raw")


def _unique_names(key: str, entries) -> list[str]:
    seen: list[str] = []
    for i, e in enumerate(entries):
        if e.name in seen:
            raise ConfigError(f"{key}[{i}].name: {e.name!r} is used twice")
        seen.append(e.name)
    return seen


def validate_eval(ev) -> None:
    """The eval section: sets, generation, judges, attacks, during_training."""
    for i, s in enumerate(ev.sets):
        if s.ratio is not None:
            raise ConfigError(f"eval.sets[{i}].ratio: eval sets are never mixed; remove it "
                              f"(eval.sets[{i}].limit takes the first n items)")
        if s.name is None:
            raise ConfigError(f"eval.sets[{i}].name: name the set (results are reported by "
                              f"set name)")
    validate_sources("eval.sets", ev.sets, SET_COLUMNS)
    _unique_names("eval.sets", ev.sets)
    tasks = {s.name: s.task for s in ev.sets}
    g = ev.generation
    if g.max_length is not None and g.max_new_tokens is not None:
        raise ConfigError("eval.generation.max_length: give max_length or max_new_tokens, not "
                          "both (set eval.generation.max_new_tokens=null)")
    if g.max_length is None and g.max_new_tokens is None:
        raise ConfigError("eval.generation.max_new_tokens: give it or max_length")
    if (g.backend == "openai") != (g.server is not None):
        raise ConfigError("eval.generation.server: backend=openai needs a server, and only it "
                          "reads one")
    if g.server is not None:
        _validate_server("eval.generation.server", g.server)
        if g.max_length is not None:
            raise ConfigError("eval.generation.max_length: backend=openai counts new tokens "
                              "only: use max_new_tokens")
    validate_custom_resources("eval.generation.resources", g.resources)
    _unique_names("eval.judges", ev.judges)
    for i, j in enumerate(ev.judges):
        where = f"eval.judges[{i}]"
        needs = {"guardrail": "guardrail", "openai": "server"}.get(j.kind)
        for part in ("guardrail", "server"):
            if (part == needs) != (getattr(j, part) is not None):
                raise ConfigError(f"{where}.{part}: kind={j.kind} "
                                  f"{'needs' if part == needs else 'does not read'} it")
        if j.guardrail is not None:
            validate_guardrails(f"{where}.guardrail", [j.guardrail])
        if j.server is not None:
            _validate_server(f"{where}.server", j.server)
        if j.template is not None and not os.path.isfile(j.template):
            raise ConfigError(f"{where}.template: no such file {j.template!r}")
        _compiles(f"{where}.verdict.positive", j.verdict.positive)
        _compiles(f"{where}.verdict.negative", j.verdict.negative)
        if j.kind == "phrases" and j.measures != "refusal":
            raise ConfigError(f"{where}.measures: kind=phrases detects refusals: set "
                              f"measures: refusal")
        if j.kind == "guardrail" and j.measures != "safety":
            raise ConfigError(f"{where}.measures: a guardrail judges safety")
    _unique_names("eval.attacks", ev.attacks)
    for i, a in enumerate(ev.attacks):
        if a.kind == "trigger" and not a.text:
            raise ConfigError(f"eval.attacks[{i}].text: a trigger attack needs the trigger text")
        _safety_sets(f"eval.attacks[{i}].sets", a.sets, tasks)
    dt = ev.during_training
    _safety_sets("eval.during_training.sets", dt.sets, tasks)
    safety_judges = [j.name for j in ev.judges if j.measures == "safety"]
    if dt.judge is not None and dt.judge not in safety_judges:
        raise ConfigError(f"eval.during_training.judge: no safety judge named {dt.judge!r} "
                          f"(safety judges: {', '.join(safety_judges) or 'none'})")
    if dt.enabled:
        if not any(t == "safety" for t in tasks.values()):
            raise ConfigError("eval.during_training.enabled: needs a safety set in eval.sets")
        if not safety_judges:
            raise ConfigError("eval.during_training.enabled: needs a safety judge in "
                              "eval.judges")
        if ev.generation.backend != "hf":
            raise ConfigError("eval.during_training.enabled: snapshots are generated by "
                              "the hf backend (eval.generation.backend=hf)")


def _safety_sets(key: str, wanted, tasks: dict) -> None:
    for j, name in enumerate(wanted):
        if name not in tasks:
            raise ConfigError(f"{key}[{j}]: no eval set named {name!r} (sets: "
                              f"{', '.join(tasks) or 'none'})")
        if tasks[name] != "safety":
            raise ConfigError(f"{key}[{j}]: {name!r} is a {tasks[name]} set, not a safety set")


def _validate_server(key: str, server) -> None:
    if not re.match(r"https?://", server.base_url):
        raise ConfigError(f"{key}.base_url: {server.base_url!r} is not an http(s) URL")
    if server.api_key_env is not None:
        validate_secret_name(f"{key}.api_key_env", server.api_key_env)


def validate_scoring(sc) -> None:
    a = sc.actors
    if a.max < a.min:
        raise ConfigError(f"scoring.actors.max: {a.max!r} is below scoring.actors.min {a.min!r}")
    validate_custom_resources("scoring.actors.resources", a.resources)


def validate_custom_resources(key: str, resources) -> None:
    for name in resources:
        if name in CUSTOM_ONLY:
            raise ConfigError(f"{key}.{name}: CPU, GPU and memory have keys of their own; "
                              f"list custom resources here (e.g. trainer, guard)")


def validate_placement(job) -> None:
    """Where Train workers and guardrail actors may run (resources alone; the nodes of a live
    cluster are checked at run start, in cluster/placement.py)."""
    t, sc = job.train, job.scoring
    validate_custom_resources("train.resources_per_worker", t.resources_per_worker)
    shared = sorted(set(t.resources_per_worker) & set(sc.actors.resources))
    if shared and not sc.colocate:
        raise ConfigError(f"scoring.actors.resources: {', '.join(shared)} is also in "
                          f"train.resources_per_worker, so guardrail actors would share the "
                          f"training nodes; use a resource of their own or scoring.colocate=true")


def validate_training(job) -> None:
    """The train, model.lora and reference sections, and how they constrain each other."""
    t, ref, lora, est = job.train, job.reference, job.model.lora, job.loss.kl.estimator
    if t.offload.optimizer != "none" and t.zero_stage == 0:
        raise ConfigError("train.offload.optimizer: needs train.zero_stage 1, 2 or 3")
    if t.offload.params != "none" and t.zero_stage != 3:
        raise ConfigError("train.offload.params: needs train.zero_stage=3 (parameters are "
                          "only partitioned there)")
    if t.deepspeed_json is not None and not os.path.isfile(t.deepspeed_json):
        raise ConfigError(f"train.deepspeed_json: no such file {t.deepspeed_json!r}")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr: {t.min_lr} is above train.lr {t.lr}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas: need two values in [0, 1), got {list(t.betas)}")
    if lora.r:
        if not lora.alpha > 0:
            raise ConfigError(f"model.lora.alpha: must be > 0, got {lora.alpha!r}")
        if not lora.target_modules:
            raise ConfigError("model.lora.target_modules: name at least one module")
    if est == "full" and ref.logprobs == "cached":
        raise ConfigError("reference.logprobs: cached holds log p_ref of dataset tokens only; "
                          "loss.kl.estimator=full needs the whole distribution: use live")
    if ref.placement == "actor_group":
        if est == "full":
            raise ConfigError("reference.placement: actor_group returns log p_ref of dataset "
                              "tokens only; loss.kl.estimator=full needs in_worker")
        if lora.r:
            raise ConfigError("reference.placement: with model.lora the reference is the base "
                              "model with the adapter disabled (no second copy): use in_worker")
    if ref.offload and t.zero_stage != 3:
        raise ConfigError("reference.offload: needs train.zero_stage=3 (the reference is "
                          "partitioned like the policy)")


ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def validate_secret_name(key: str, name: str) -> None:
    """A secret is given by the name of an environment variable, never by its value (which
    must not be echoed in the error either)."""
    from ..tracking import redact

    name = str(name)
    if re.fullmatch(ENV_NAME, name):
        return
    head = name.split("=", 1)[0]
    if "=" in name and re.fullmatch(ENV_NAME, head):
        raise ConfigError(f"{key}: {head}=... gives a value; list the name only ({head}): the "
                          f"value is read from the submitter's environment at submit time")
    raise ConfigError(f"{key}: {redact(name)!r} is not an environment variable name")


def validate_submit(sub) -> None:
    """The submit section (stardss/cluster/submit.py)."""
    from ..tracking import redact

    for i, name in enumerate(sub.secrets):
        validate_secret_name(f"submit.secrets[{i}]", name)
    for name, value in sub.env_vars.items():
        if not re.fullmatch(ENV_NAME, str(name)):
            raise ConfigError(f"submit.env_vars.{name}: not an environment variable name")
        if name in sub.secrets:
            raise ConfigError(f"submit.env_vars.{name}: also in submit.secrets; keep the name "
                              f"in secrets only")
        if redact({name: value}) != {name: value}:
            raise ConfigError(f"submit.env_vars.{name}: looks like a secret; list its name in "
                              f"submit.secrets (or pass --secret {name}) so its value comes "
                              f"from the submitter's environment, not the job file")
    if not str(sub.python).strip() or any(c in str(sub.python) for c in '\n"$`\\'):
        raise ConfigError(f"submit.python: {sub.python!r} is not a command (e.g. python or "
                          f"/opt/venv/bin/python)")
    for i, extra in enumerate(sub.extras):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(extra)):
            raise ConfigError(f"submit.extras[{i}]: {extra!r} is not an extra's name")
    if sub.extras and sub.install != "working_dir":
        raise ConfigError("submit.extras: only used with submit.install=working_dir")


def _compiles(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{key}: {err}") from None


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
