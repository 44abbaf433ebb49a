"""`stardss eval`: every set of `eval.sets` (and the attacks' variants) answered by each model
folder on the generation pool, judged by every judge (guardrail judges in the guardrail actor
pool, OpenAI-compatible judges over HTTP, refusal phrases in the driver), reported per set,
category and judge with 95 % Wilson intervals in <out_dir>/eval/<model>/results.json and
samples.jsonl, a markdown table printed at the end, and the samples as W&B tables."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..cluster.resources import init_ray
from ..config.load import to_dict
from ..config.schema import GuardrailConfig, JobConfig
from ..console import log
from ..data.tokenizer import check_model_ref
from ..eval import evaluate
from ..eval.judges import build_judges, pool_scorer
from ..eval.results import headline, markdown_table
from ..tracking import open_tracker, redact

# What a guardrail's judgement depends on: the same model (or rules) judging is the same judge,
# whatever device or batch size it runs with.
_IDENTITY = ("kind", "name_or_path", "revision", "categories", "excluded_categories",
             "risk_name", "policy", "safe_label", "bias", "rules")


def same_guardrail(a: GuardrailConfig, b: GuardrailConfig) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in _IDENTITY)


def training_guard_warnings(job: JobConfig) -> list[str]:
    """A warning for each judge that is one of the guardrails the job trains with: a model
    trained to look safe to guardrail G and judged by G is not shown to be safe."""
    return [f"judge {j.name!r} is the training guardrail guardrails[{i}] ({g.kind}"
            f"{' ' + g.name_or_path if g.name_or_path else ''}): a model trained against it "
            f"looks safer to it than it is; judge with another model too"
            for j in job.eval.judges if j.guardrail is not None
            for i, g in enumerate(job.guardrails) if same_guardrail(j.guardrail, g)]


def run_eval(job: JobConfig, models: dict[str, str], out: str | None = None) -> dict[str, dict]:
    """Results of each named model folder ({name: folder}), written to <out>/<name>/ (default
    <out_dir>/eval/<name>/)."""
    from ..guard.pool import GuardPool

    ev = job.eval
    if not ev.sets:
        raise ValueError("eval.sets: name at least one set to evaluate on")
    out_dir = Path(out or Path(job.out_dir) / "eval")
    warnings = training_guard_warnings(job)
    for w in warnings:
        log(f"WARNING: {w}")
    plan = evaluate.plan_items(ev, seed=job.seed)
    for note in plan.notes:
        log(f"eval: {note}")
    log(f"eval: {len(plan.items)} items in {len(plan.rows())} rows ({', '.join(plan.rows())})")
    for name, path in models.items():  # before Ray starts and generation actors load them
        check_model_ref(path, "model.name_or_path" if path == job.model.name_or_path
                        else f"--model {name}", job.model.revision)
    init_ray(job.ray, job.train)
    seed = job.seed if ev.generation.seed is None else ev.generation.seed
    answers = {}
    for name, path in models.items():
        log(f"eval {name}: generating with {ev.generation.backend} from {path}")
        answers[name] = evaluate.answer(path, ev.generation, plan.items, seed=seed)
    guard_cfgs = [j for j in ev.judges if j.kind == "guardrail"]
    results = {}
    with ExitStack() as stack:
        scores = {}
        if guard_cfgs:
            pool = stack.enter_context(GuardPool([j.guardrail for j in guard_cfgs], job.scoring))
            scores = {j.name: pool_scorer(pool, i) for i, j in enumerate(guard_cfgs)}
        judges = build_judges(list(ev.judges), cache_dir=ev.cache_dir or
                              str(Path(job.out_dir) / "judge_cache"), guard_scores=scores)
        judges = evaluate.refusal_judges(judges, plan.items)
        tracker = stack.enter_context(open_tracker(
            job.tracking.wandb, job=redact(to_dict(job)), group=job.name, role="eval",
            out_dir=str(out_dir)))
        for name, path in models.items():
            verdicts = evaluate.judge(judges, plan.items, answers[name].generations)
            results[name], samples = evaluate.report(name, path, plan, answers[name], judges,
                                                     verdicts, ev, out=out_dir,
                                                     warnings=warnings)
            _log_samples(tracker, name, samples, ev.samples_to_log)
            tracker.summary({f"{name}/{k}": v for k, v in headline(results[name]).items()})
    print(markdown_table(results))
    log(f"eval: results in {out_dir}/<model>/results.json")
    return results


def _log_samples(tracker, model: str, samples: list[dict], per_row: int) -> None:
    if not tracker.enabled or not per_row:
        return
    by_row: dict[str, list[dict]] = {}
    for s in samples:
        by_row.setdefault(s["row"], []).append(s)
    for row, mine in by_row.items():
        judges = sorted({j for s in mine for j in s["verdicts"]})
        cols = ["key", "category", "prompt", "prefill", "response", *judges]
        tracker.table(f"eval/{model}/{row}", cols, [
            [s["key"], s["category"], s["prompt"], s["prefill"], s["response"],
             *[s["verdicts"].get(j, {}).get("label") for j in judges]] for s in mine[:per_row]])
