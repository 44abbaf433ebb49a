"""Loss normalisation by the response tokens of the *global* batch: the same data and seed
split as (1 worker, accumulation 4), (2 workers, accumulation 2) and (4 workers, accumulation 1)
train the same parameters, for every loss kind and ZeRO stage 1-3.

One Ray Train fit per split runs every (kind, stage) pair through the workers' own pieces
(`train_loops.every_kind_and_stage`), two optimizer steps each, the second one short (empty
slots), and rank 0 saves the gathered parameters.
"""

from dataclasses import replace

import pytest
import torch

from stardss.commands.train import training_spec
from stardss.train.batches import plan_for
from tests.helpers import make_job, soft_weighted_rows, tokenizer
from tests.integration.train_loops import KINDS, STAGES, every_kind_and_stage

SPLITS = ((1, 4), (2, 2), (4, 1))  # (workers, grad_accum), micro-batch 2: global batch 8
ROWS = 12  # 2 steps of 8 slots: the second has 4 rows and 4 empty slots


@pytest.fixture(scope="module")
def trained(ray_session, base_model, tmp_path_factory):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    root = tmp_path_factory.mktemp("norm")
    job = make_job(root, base_model, "data.sources.0.ratio=1.0", f"data.mix_size={ROWS}",
                   "train.micro_batch_size=2")
    tok = tokenizer()
    rows = soft_weighted_rows(job)
    out = {}
    for workers, accum in SPLITS:
        spec = training_spec(job, base_model, base_model, tok.pad_token_id, root, "norm")
        spec = replace(spec, train=replace(spec.train, workers=workers, grad_accum=accum))
        path = root / f"w{workers}.pt"
        trainer = TorchTrainer(
            every_kind_and_stage,
            train_loop_config={"base": spec, "rows": rows, "out": str(path),
                               "plan": plan_for(spec.train, spec.seed, len(rows))},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name=f"norm-w{workers}", storage_path=str(root / "ray")))
        trainer.fit()
        out[workers] = torch.load(path)
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_split_trains_the_same_parameters(trained, kind, stage):
    key = f"{kind}/z{stage}"
    ref_losses, ref_params = trained[1][key]
    assert len(ref_losses) == 2
    if kind == "kl_only":  # the policy starts at the reference, then moves (k1)
        assert ref_losses[0] == 0.0 and ref_losses[-1] != 0.0
    else:
        assert ref_losses[0] > 0
    for workers in (2, 4):
        losses, params = trained[workers][key]
        assert losses == pytest.approx(ref_losses, rel=1e-5), workers
        assert params.keys() == ref_params.keys()
        for name, value in ref_params.items():
            torch.testing.assert_close(params[name], value, rtol=1e-4, atol=2e-6,
                                       msg=lambda m: f"{key}, {workers} workers, {name}: {m}")
    if kind in ("reweight", "dss", "kl_only"):  # they weight tokens otherwise than sft
        sft = trained[1][f"sft/z{stage}"][1]
        assert any(not torch.equal(sft[k], ref_params[k]) for k in sft)
