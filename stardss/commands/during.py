"""The wiring of safety over training (`eval.during_training`, stardss/eval/during.py): its
items, its judge (a guardrail judge on a one-actor guardrail pool of its own, beside the STAR
pool), and the monitor around a training run."""
from __future__ import annotations

import dataclasses
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..config.schema import JobConfig
from ..console import log


def snapshot_dir(out: Path) -> str:
    return str(out.resolve() / "snapshots")


@contextmanager
def safety_monitor(job: JobConfig, out: Path, tracker,
                   start_model: str) -> Iterator[Optional[object]]:
    """A started SafetyMonitor (its generation actor on `start_model`, the run's first weights,
    until the first snapshot) while the block runs (None when eval.during_training is off);
    on a clean exit it evaluates the snapshots left and raises what failed in the background."""
    dt = job.eval.during_training
    if not dt.enabled:
        yield None
        return
    from ..eval.during import SafetyMonitor, during_items
    from ..eval.judges import build_judges, pool_scorer
    from ..eval.sets import load_sets
    from ..guard.pool import GuardPool

    safety = [j for j in job.eval.judges if j.measures == "safety"]
    cfg = next(j for j in safety if j.name == dt.judge) if dt.judge else safety[0]
    # Only the sets it judges are read (not, say, MMLU from the Hub at every training start).
    chosen = [s for s in job.eval.sets if s.task == "safety" and (not dt.sets or s.name in dt.sets)]
    loaded = load_sets(chosen, seed=job.seed)
    items = during_items([it for s in loaded.values() for it in s.items], dt)
    seed = job.seed if job.eval.generation.seed is None else job.eval.generation.seed
    with ExitStack() as stack:
        scores = {}
        if cfg.kind == "guardrail":
            a = job.scoring.actors
            scoring = dataclasses.replace(job.scoring, actors=dataclasses.replace(
                a, min=1, max=1, num_cpus=dt.num_cpus, num_gpus=0.0,
                nice=19 if dt.num_cpus == 0 else a.nice))
            pool = stack.enter_context(GuardPool([cfg.guardrail], scoring))
            scores = {cfg.name: pool_scorer(pool, 0)}
        (judge,) = build_judges([cfg], cache_dir=job.eval.cache_dir or
                                str(Path(job.out_dir) / "judge_cache"), guard_scores=scores)
        monitor = SafetyMonitor(snapshot_dir(out), dt, job.eval.generation, items, judge,
                                start_model=start_model, seed=seed, tracker=tracker,
                                out_file=str(out / "safety_over_training.jsonl"))
        log(f"safety over training: {len(items)} items judged by {judge.name} every "
            f"{dt.every_steps} steps")
        with monitor:
            yield monitor
        monitor.finish(timeout_s=job.train.timeout_s)
