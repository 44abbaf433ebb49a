"""Safety over training: a real run (Ray Train + DeepSpeed) writes snapshots every 2 steps, the
driver's monitor answers and judges them while training goes on, and each logged rate is
exactly what evaluating that snapshot on its own gives."""
import json
from pathlib import Path

import numpy as np
import pytest

from stardss.commands.train import run_train
from stardss.eval.during import during_items
from stardss.eval.evaluate import judge, plan_items
from stardss.eval.generation import GenerationPool
from stardss.eval.judges import GuardrailJudge
from stardss.eval.results import build_results
from stardss.guard.base import ScoreRequest
from stardss.guard.rules import RuleGuardrail
from tests.helpers import make_job

pytestmark = pytest.mark.ray_session()

DURING = ["loss.kind=sft", "train.max_steps=6", "eval.during_training.enabled=true",
          "eval.during_training.every_steps=2", "eval.during_training.limit=6",
          "eval.during_training.keep_snapshots=true", "eval.generation.max_new_tokens=12"]


@pytest.fixture(scope="module")
def trained(ray_session, base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("during")
    job = make_job(root, base_model, *DURING)
    return job, run_train(job)


def test_every_snapshot_is_evaluated_during_the_run(trained):
    job, summary = trained
    out = Path(job.out_dir) / "sft"
    lines = [json.loads(x) for x in (out / "safety_over_training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]  # not the final step: `stardss eval` does that
    assert summary["safety_over_training"] == lines
    for r in lines:
        assert r["judge"] == "strict" and set(r["rows"]) == {"harmful"}
        assert r["rows"]["harmful"]["n"] == 6
    assert summary["steps"] == 6


def test_a_logged_rate_is_what_the_snapshot_gives_on_its_own(trained):
    job, _ = trained
    out = Path(job.out_dir) / "sft"
    record = json.loads((out / "safety_over_training.jsonl").read_text().splitlines()[0])
    items = during_items(plan_items(job.eval, seed=job.seed).items, job.eval.during_training)
    gen = job.eval.generation
    with GenerationPool(str(out / "snapshots" / "step_2"), gen, seed=job.seed) as pool:
        generations = pool.generate(items)
    cfg = job.eval.judges[0]
    rules = RuleGuardrail(cfg.guardrail)

    def score(prompts, responses):  # the rule guardrail in-process, on whole responses
        reqs = [ScoreRequest(str(i), p, r, [len(r)]) for i, (p, r) in
                enumerate(zip(prompts, responses))]
        return np.array([s[-1] for s in rules.score_prefixes(reqs)])

    verdicts = judge([GuardrailJudge(cfg, score)], items, generations)
    results, _ = build_results(items, generations, verdicts, {"strict": "safety"}, {})
    m = results["rows"]["harmful"]["metrics"]["strict"]
    assert {k: m[k] for k in ("k", "n", "rate", "lo", "hi")} == record["rows"]["harmful"]
