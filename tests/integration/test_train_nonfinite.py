"""A finite config whose loss turns non-finite at run time (real Ray Train + DeepSpeed): NaN
token weights injected into one row of one known step. max_nonfinite_steps=0 fails the run at
that step naming the step, the rank and that rank's row ids, and no model is written; =1 skips
exactly that step (no update, logged "skipped") and completes with a finite model."""
import math
from dataclasses import replace

import pytest
import torch

from stardss.commands.train import training_spec
from stardss.train.trainer import run_training, table_steps
from tests.helpers import make_job, soft_weighted_rows, tokenizer

BAD_STEP = 1  # 0-based plan step whose rows carry the NaN weights (the log's step 2)
BAD_RANK = 1

pytestmark = pytest.mark.ray_session(plain=True)


def _spec(root, base_model, *overrides):
    job = make_job(root, base_model, "data.sources.0.ratio=1.0", "data.mix_size=24",
                   "train.micro_batch_size=4", "train.workers=2", "reference.logprobs=live",
                   *overrides)
    return training_spec(job, base_model, base_model, tokenizer().pad_token_id, root / "run",
                         "nonfinite")


@pytest.fixture(scope="module")
def poisoned(ray_session, base_model, tmp_path_factory):
    """The rows with one row of rank 1's share of step 2 given NaN weights (one epoch: no row
    comes back in another step), and that share's row ids in order."""
    spec = _spec(tmp_path_factory.mktemp("plan"), base_model)
    rows = soft_weighted_rows(make_job("/tmp/unused", base_model, "data.sources.0.ratio=1.0",
                                       "data.mix_size=24"))
    plan = table_steps(rows, spec).plan
    assert len(plan) == 3 and spec.train.epochs == 1
    share = 4 * spec.train.grad_accum
    slots = plan[BAD_STEP][BAD_RANK * share:(BAD_RANK + 1) * share]
    target = slots[1]
    rows = list(rows)
    rows[target] = replace(rows[target], weights=[math.nan] * len(rows[target].weights))
    return rows, [rows[i].id for i in slots if i is not None]


def _fit(root, base_model, rows, *overrides):
    spec = _spec(root, base_model, *overrides)
    return run_training(spec, table_steps(rows, spec), on_cluster=False)


def test_a_nan_loss_fails_the_run_at_its_step_naming_rank_and_rows(poisoned, base_model,
                                                                    tmp_path):
    rows, ids = poisoned
    with pytest.raises(Exception) as err:
        _fit(tmp_path, base_model, rows)
    line = (f"non-finite loss (nan) at step {BAD_STEP + 1} on rank {BAD_RANK} "
            f"(rows {', '.join(ids)}): train.max_nonfinite_steps=0")
    assert line in str(err.value)
    assert not (tmp_path / "run" / "model").exists()


def test_an_allowed_nan_step_is_skipped_and_the_run_completes(poisoned, base_model, tmp_path):
    rows, _ = poisoned
    result = _fit(tmp_path, base_model, rows, "train.max_nonfinite_steps=1")
    assert [s["step"] for s in result.log] == [1, 2, 3]
    assert [bool(s.get("skipped")) for s in result.log] == [False, True, False]
    assert math.isnan(result.log[1]["loss"])
    assert all(math.isfinite(s["loss"]) for s in (result.log[0], result.log[2]))
    # the schedule follows the plan step: step 3's LR is that of an unskipped run's step 3
    assert result.log[2]["lr"] < result.log[1]["lr"] < result.log[0]["lr"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


CONFIGS = ((0, False), (3, False), (2, True), (3, True))  # ZeRO-2 fp32: the fits above


def test_every_zero_stage_and_bf16_skips_the_bad_step_without_moving_a_weight(
        poisoned, base_model, tmp_path):
    """The workers' own step (one fit, every config in it): the NaN step is skipped on every
    rank under ZeRO-0 and ZeRO-3, fp32 and bf16, and no parameter moves in it; the steps around
    it train."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.integration.train_loops import nonfinite_every_stage

    rows, _ = poisoned
    spec = _spec(tmp_path, base_model, "train.max_nonfinite_steps=1")
    path = tmp_path / "nonfinite.pt"
    plan = table_steps(rows, spec).plan
    TorchTrainer(nonfinite_every_stage,
                 train_loop_config={"base": spec, "rows": rows, "plan": plan, "configs": CONFIGS,
                                    "out": str(path)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(name="nonfinite", storage_path=str(tmp_path / "ray"))).fit()
    results = torch.load(path)
    for stage, bf16 in CONFIGS:
        key = f"z{stage}/{'bf16' if bf16 else 'fp32'}"
        got = results[key]
        assert got["error"] is None, (key, got["error"])
        assert [bool(e.get("skipped")) for e in got["entries"]] == [False, True, False], key
        assert got["moved"] == [True, False, True], key
        assert math.isnan(got["entries"][BAD_STEP]["loss"]), key
