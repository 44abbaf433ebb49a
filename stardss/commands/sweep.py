"""`stardss sweep`: the paper's trade-off figure on the embedded toy world.

1. the demo's world, tiny model and alignment (commands/demo.py aligned_world), and its
   training guardrail (demo.guard: the learned one by default, or the rules);
2. for each harmful shape and harm ratio r (demo.sweep): the tasks mixed with a share r of the
   shape's rows (demo.sweep.mix_size rows; r = 0 is tasks only, one run shared by every
   shape), finetuned with each method (sft, rs, dss by default);
3. every model answers the held-out harmful requests (the strict judge: the safety rate) and
   the tasks (capability), each rate with its 95 % Wilson interval;
4. <out>/sweep.json and <out>/sweep.png: safety vs harm ratio per method, one panel per shape,
   and capability vs harm ratio below, the aligned model as a dashed line.

Greedy decoding flips with float rounding: another machine draws other points within (or
near) the intervals; compare methods by their intervals, not their third decimals.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config.fields import ConfigError
from ..config.load import derive
from ..config.schema import EvalSetConfig, SourceConfig
from ..console import log
from ..demo.config import DemoJobConfig
from ..eval.plots import sweep_figure
from .demo import aligned_world, demo_guard
from .eval import run_eval
from .train import run_train

SAFETY = ("harmful", "strict")
CAPABILITY = ("tasks", "accuracy")
"""(results row, metric) of the two rates each point shows."""


def sweep_points(ratios, shapes) -> list[tuple[str, float]]:
    """(shape, ratio) of every mixture trained: r = 0 once (no harmful rows: the same data
    whatever the shape), as ("none", 0.0)."""
    points = [("none", 0.0)] if any(r == 0 for r in ratios) else []
    return points + [(s, float(r)) for s in shapes for r in ratios if r > 0]


def mixture(shape: str, ratio: float) -> list[SourceConfig]:
    """The toy sources of one point: tasks at 1 - ratio, the shape's rows at ratio."""
    sources = []
    if ratio < 1:
        sources.append(SourceConfig(path="tasks", kind="toy", ratio=1.0 - ratio))
    if ratio > 0:
        sources.append(SourceConfig(path=shape, kind="toy", ratio=ratio))
    return sources


def point_name(method: str, shape: str, ratio: float) -> str:
    return f"{method}@{shape}-r{ratio:g}"


def _eval_job(job: DemoJobConfig) -> DemoJobConfig:
    """The demo's evaluation cut to the two rates the figure shows: harmful requests judged
    strictly, and the tasks; no attack, no safety over training."""
    sets = [s for s in job.eval.sets if s.name in (SAFETY[0], CAPABILITY[0])]
    if {s.name for s in sets} != {SAFETY[0], CAPABILITY[0]}:
        raise ConfigError(f"eval.sets: stardss sweep reads the sets named {SAFETY[0]!r} "
                          f"(task safety) and {CAPABILITY[0]!r} (task answer)")
    judges = [j for j in job.eval.judges if j.name == SAFETY[1]]
    if not judges:
        raise ConfigError(f"eval.judges: stardss sweep judges safety with the judge named "
                          f"{SAFETY[1]!r}")
    return derive(job, {"eval.sets": [EvalSetConfig(**vars(s)) for s in sets],
                        "eval.judges": judges, "eval.attacks": [],
                        "eval.during_training.enabled": False})


def _check(job: DemoJobConfig) -> None:
    sw = job.demo.sweep
    for key in ("ratios", "shapes", "methods"):
        if not getattr(sw, key):
            raise ConfigError(f"demo.sweep.{key}: name at least one")


def _rate(results: dict, row: str, metric: str) -> dict:
    m = results["rows"][row]["metrics"][metric]
    return {k: m[k] for k in ("rate", "lo", "hi", "k", "n")}


def run_sweep(job: DemoJobConfig, out_dir: str | None = None) -> dict:
    started = time.perf_counter()
    _check(job)
    sw = job.demo.sweep
    out = Path(out_dir or Path(job.out_dir) / "sweep")
    job, aligned = aligned_world(job, out)
    job = demo_guard(job, out)  # the demo's training guardrail (demo.guard)
    job = _eval_job(derive(job, {"train.epochs": sw.epochs, "data.mix_size": sw.mix_size,
                                 "eval.during_training.enabled": False}))
    base = aligned["model_dir"]
    points = sweep_points(sw.ratios, sw.shapes)
    models, runs = {"base": base}, {}
    for i, (shape, ratio) in enumerate(points):
        for method in sw.methods:
            name = point_name(method, shape, ratio)
            log(f"step 3/4: {name} ({i + 1}/{len(points)} mixtures)")
            runs[name] = run_train(derive(job, {"loss.kind": method,
                                                "data.sources": mixture(shape, ratio)}),
                                   model_path=base, run_name=method,
                                   out_dir=str(out / "runs" / f"{shape}-r{ratio:g}" / method))
            models[name] = runs[name]["model_dir"]
    log(f"step 4/4: evaluation of {len(models)} models")
    evals = run_eval(job, models, out=str(out / "eval"))
    rows = []
    for (shape, ratio) in points:
        for method in sw.methods:
            name = point_name(method, shape, ratio)
            rows.append({"shape": shape, "ratio": ratio, "method": method, "model": name,
                         "safety": _rate(evals[name], *SAFETY),
                         "capability": _rate(evals[name], *CAPABILITY),
                         "steps": runs[name]["steps"],
                         "train_seconds": runs[name]["train_seconds"]})
    base_rates = {"safety": _rate(evals["base"], *SAFETY),
                  "capability": _rate(evals["base"], *CAPABILITY)}
    plot = sweep_figure(rows, base_rates, list(sw.shapes), out / "sweep.png")
    result = {"points": rows, "base": base_rates, "plot": str(plot),
              "config": {"ratios": list(sw.ratios), "shapes": list(sw.shapes),
                         "methods": list(sw.methods), "mix_size": sw.mix_size,
                         "epochs": sw.epochs},
              "sweep_seconds": time.perf_counter() - started}
    with open(out / "sweep.json", "w") as f:
        json.dump(result, f, indent=1)
    print(format_sweep(rows, base_rates))
    print(f"rates with 95 % Wilson intervals (greedy decoding: another machine may differ "
          f"within them); figure: {plot}  ({result['sweep_seconds']:.0f} s)")
    return result


def format_sweep(rows: list[dict], base: dict) -> str:
    lines = [f"{'shape':<24}{'ratio':>6} {'method':<7}{'safety':>22}{'capability':>22}"]

    def cell(r):
        return f"{r['rate']:>6.3f} [{r['lo']:.2f}, {r['hi']:.2f}]"

    lines.append(f"{'base (aligned)':<24}{'':>6} {'':<7}{cell(base['safety']):>22}"
                 f"{cell(base['capability']):>22}")
    for r in rows:
        lines.append(f"{r['shape']:<24}{r['ratio']:>6g} {r['method']:<7}"
                     f"{cell(r['safety']):>22}{cell(r['capability']):>22}")
    return "\n".join(lines)
