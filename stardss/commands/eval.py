"""`stardss eval`: safety rate and capability of model folders; the judges run in the
guardrail actor pool, like the training guardrails."""
from __future__ import annotations

from ..cluster.resources import init_ray
from ..config.schema import JobConfig
from ..console import log
from ..data.load import load_prompts
from ..guard.base import ScoreRequest


def pool_judge(pool):
    """Judge whole responses with the guardrail actor pool: (n_judges, n) P(safe)."""
    import numpy as np

    def judge(prompts: list[str], responses: list[str]) -> np.ndarray:
        requests = [ScoreRequest(str(i), p, r, [len(r)])
                    for i, (p, r) in enumerate(zip(prompts, responses))]
        scored = pool.score(requests)
        return np.stack([scored[q.key][:, 0] for q in requests], axis=1)

    return judge


def run_eval(job: JobConfig, models: dict[str, str]) -> dict:
    """Safety rate and capability of each named model folder ({name: folder})."""
    from ..eval.evaluate import evaluate_model
    from ..guard.pool import GuardPool

    harmful = load_prompts(job.eval.harmful, seed=job.seed)
    benign = load_prompts(job.eval.benign, seed=job.seed)
    judges = list(job.eval.judge or job.guardrails)
    if not judges:
        raise ValueError("eval needs eval.judge or guardrails to judge responses")
    init_ray(job.ray, job.train)
    results = {}
    with GuardPool(judges, job.scoring) as pool:
        for name, path in models.items():
            log(f"eval {name}: {len(harmful)} harmful prompts, {len(benign)} tasks")
            results[name] = evaluate_model(path, job.eval, harmful, benign, pool_judge(pool),
                                           job.star.combine, job.seed)
            log(f"eval {name}: safety {results[name]['safety_rate']:.3f} "
                f"capability {results[name]['capability']:.3f}")
    return results
