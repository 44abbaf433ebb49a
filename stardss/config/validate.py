"""Checks that types alone cannot express; every message starts with the key's name."""
from __future__ import annotations

import os
from typing import Any


class ConfigError(ValueError):
    """A job config key has a bad value; the message names the key."""


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _in_unit(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: must be within [0, 1], got {value!r}")


GUARD_KINDS = ("rules", "llama_guard", "granite_guardian", "shieldgemma", "wildguard",
               "hf_classifier")
LOSS_KINDS = ("sft", "rs", "reweight", "dss", "kl_only")
KL_ESTIMATORS = ("k1", "k2", "k3", "full")


# The fields of a row (data/rows.py) that a source's `columns` may fill from a column.
ROW_FIELDS = ("prompt", "response", "system", "id", "answer", "messages")


def validate_sources(key: str, sources) -> None:
    ratios = [s.ratio for s in sources]
    if any(r is not None for r in ratios) and any(r is None for r in ratios):
        raise ConfigError(f"{key}: give every source a ratio or none")
    for i, src in enumerate(sources):
        _one_of(f"{key}[{i}].kind", src.kind, ("auto", "jsonl", "parquet", "hf", "toy"))
        if src.ratio is not None:
            _positive(f"{key}[{i}].ratio", src.ratio)
        validate_source_shape(f"{key}[{i}]", src)


def validate_source_shape(key: str, src) -> None:
    """A source's subset, columns, where and answer_regex (see SourceConfig)."""
    import re

    if src.subset is not None and src.kind in ("jsonl", "parquet", "toy"):
        raise ConfigError(f"{key}.subset: kind {src.kind} has no subsets (Hub datasets do)")
    for field_name, column in src.columns.items():
        if field_name not in ROW_FIELDS:
            raise ConfigError(f"{key}.columns.{field_name}: not a row field (one of "
                              f"{', '.join(ROW_FIELDS)})")
        if not column:
            raise ConfigError(f"{key}.columns.{field_name}: name the column it comes from")
    for column, value in src.where.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(f"{key}.where.{column}: must be one value to compare with "
                              f"(string, number, bool or null), got {value!r}")
    if src.answer_regex is not None:
        try:
            re.compile(src.answer_regex)
        except re.error as err:
            raise ConfigError(f"{key}.answer_regex: {err}") from None


def validate_guardrails(key: str, guards) -> None:
    import re

    for i, g in enumerate(guards):
        _one_of(f"{key}[{i}].kind", g.kind, GUARD_KINDS)
        _one_of(f"{key}[{i}].mode", g.mode, ("packed", "naive"))
        _one_of(f"{key}[{i}].dtype", g.dtype, ("float32", "bfloat16", "float16"))
        _positive(f"{key}[{i}].batch_size", g.batch_size)
        if g.kind != "rules" and not g.name_or_path:
            raise ConfigError(f"{key}[{i}].name_or_path: kind={g.kind} needs a model id or folder")
        for j, rule in enumerate(g.rules):
            try:
                re.compile(rule.pattern)
            except re.error as err:
                raise ConfigError(f"{key}[{i}].rules[{j}].pattern: {err}") from None


def validate_scoring(key: str, sc) -> None:
    _one_of(f"{key}.mode", sc.mode, ("stream", "precompute", "cache"))
    _positive(f"{key}.prefetch_steps", sc.prefetch_steps)
    a = sc.actors
    if a.min < 1:
        raise ConfigError(f"{key}.actors.min: must be >= 1, got {a.min!r}")
    if a.max < a.min:
        raise ConfigError(f"{key}.actors.max: {a.max!r} is below {key}.actors.min {a.min!r}")
    _positive(f"{key}.actors.batch_size", a.batch_size)
    _positive(f"{key}.actors.num_cpus", a.num_cpus, allow_zero=True)
    _positive(f"{key}.actors.num_gpus", a.num_gpus, allow_zero=True)
    for k in ("max_in_flight", "timeout_s", "start_timeout_s", "progress_timeout_s"):
        _positive(f"{key}.{k}", getattr(sc, k))
    _positive(f"{key}.max_restarts", sc.max_restarts, allow_zero=True)
    _positive(f"{key}.idle_s", sc.idle_s, allow_zero=True)
    validate_custom_resources(f"{key}.actors.resources", a.resources)
    if not 0 <= a.nice <= 19:
        raise ConfigError(f"{key}.actors.nice: a niceness within [0, 19], got {a.nice!r}")


def validate_custom_resources(key: str, resources) -> None:
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{key}.{name}: CPU, GPU and memory have keys of their own; "
                              f"list custom resources here (e.g. trainer, guard)")
        _positive(f"{key}.{name}", amount)


def validate_placement(cfg) -> None:
    """Where Train workers and guardrail actors may run (resources alone; the nodes of a live
    cluster are checked at run start, in cluster/placement.py)."""
    t, sc = cfg.train, cfg.scoring
    validate_custom_resources("train.resources_per_worker", t.resources_per_worker)
    _one_of("train.placement_strategy", t.placement_strategy,
            ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    shared = sorted(set(t.resources_per_worker) & set(sc.actors.resources))
    if shared and not sc.colocate:
        raise ConfigError(f"scoring.actors.resources: {', '.join(shared)} is also in "
                          f"train.resources_per_worker, so guardrail actors would share the "
                          f"training nodes; use a resource of their own or scoring.colocate=true")


def validate_training(cfg) -> None:
    """The train, model.lora and reference sections, and how they constrain each other."""
    t, ref, lora, est = cfg.train, cfg.reference, cfg.model.lora, cfg.loss.kl.estimator
    for key in ("workers", "epochs", "micro_batch_size", "grad_accum", "log_every", "timeout_s",
                "keep_checkpoints"):
        _positive(f"train.{key}", getattr(t, key))
    _positive("train.cpus_per_worker", t.cpus_per_worker, allow_zero=True)
    _positive("train.checkpoint_every", t.checkpoint_every, allow_zero=True)
    if t.max_failures < -1:
        raise ConfigError(f"train.max_failures: -1 (no limit) or >= 0, got {t.max_failures!r}")
    _one_of("train.zero_stage", t.zero_stage, (0, 1, 2, 3))
    _one_of("train.offload.optimizer", t.offload.optimizer, ("none", "cpu"))
    _one_of("train.offload.params", t.offload.params, ("none", "cpu"))
    if t.offload.optimizer != "none" and t.zero_stage == 0:
        raise ConfigError("train.offload.optimizer: needs train.zero_stage 1, 2 or 3")
    if t.offload.params != "none" and t.zero_stage != 3:
        raise ConfigError("train.offload.params: needs train.zero_stage=3 (parameters are "
                          "only partitioned there)")
    if t.deepspeed_json is not None and not os.path.isfile(t.deepspeed_json):
        raise ConfigError(f"train.deepspeed_json: no such file {t.deepspeed_json!r}")
    _positive("train.lr", t.lr)
    _positive("train.min_lr", t.min_lr, allow_zero=True)
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr: {t.min_lr} is above train.lr {t.lr}")
    _in_unit("train.warmup_ratio", t.warmup_ratio)
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas: need two values in [0, 1), got {list(t.betas)}")
    _positive("train.grad_clip", t.grad_clip, allow_zero=True)
    if t.max_steps is not None:
        _positive("train.max_steps", t.max_steps)

    _positive("model.lora.r", lora.r, allow_zero=True)
    if lora.r:
        _positive("model.lora.alpha", lora.alpha)
        _in_unit("model.lora.dropout", lora.dropout)
        if not lora.target_modules:
            raise ConfigError("model.lora.target_modules: name at least one module")

    _one_of("reference.placement", ref.placement, ("in_worker", "actor_group"))
    _one_of("reference.logprobs", ref.logprobs, ("live", "cached"))
    for key in ("actors", "timeout_s"):
        _positive(f"reference.{key}", getattr(ref, key))
    _positive("reference.num_cpus", ref.num_cpus, allow_zero=True)
    _positive("reference.num_gpus", ref.num_gpus, allow_zero=True)
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
    import re

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
    import re

    from ..tracking import redact

    _one_of("submit.install", sub.install, ("none", "working_dir"))
    _one_of("submit.installer", sub.installer, ("pip", "uv"))
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
    for i, extra in enumerate(sub.extras):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(extra)):
            raise ConfigError(f"submit.extras[{i}]: {extra!r} is not an extra's name")
    if sub.extras and sub.install != "working_dir":
        raise ConfigError("submit.extras: only used with submit.install=working_dir")


def validate(cfg) -> None:
    d, s = cfg.data, cfg.star
    validate_sources("data.sources", d.sources)
    _one_of("data.on_bad_row", d.on_bad_row, ("error", "quarantine"))
    _positive("data.max_length", d.max_length)
    if d.mix_size is not None:
        _positive("data.mix_size", d.mix_size)
    validate_guardrails("guardrails", cfg.guardrails)
    validate_guardrails("eval.judge", cfg.eval.judge)
    validate_sources("eval.harmful", cfg.eval.harmful)
    validate_sources("eval.benign", cfg.eval.benign)
    _one_of("star.chunk.unit", s.chunk.unit, ("words", "tokens"))
    _positive("star.chunk.size", s.chunk.size)
    _one_of("star.combine", s.combine, ("mean", "min"))
    if s.threshold is not None:
        _in_unit("star.threshold", s.threshold)
    _one_of("loss.kind", cfg.loss.kind, LOSS_KINDS)
    _one_of("loss.kl.estimator", cfg.loss.kl.estimator, KL_ESTIMATORS)
    _positive("loss.kl.coef", cfg.loss.kl.coef, allow_zero=True)
    _in_unit("loss.rs_threshold", cfg.loss.rs_threshold)
    validate_scoring("scoring", cfg.scoring)
    validate_training(cfg)
    validate_placement(cfg)
    _positive("eval.max_new_tokens", cfg.eval.max_new_tokens)
    _positive("eval.temperature", cfg.eval.temperature, allow_zero=True)
    _one_of("tracking.wandb.mode", cfg.tracking.wandb.mode, ("offline", "online", "disabled"))
    for m in cfg.demo.methods:
        _one_of("demo.methods", m, LOSS_KINDS)
    validate_submit(cfg.submit)
