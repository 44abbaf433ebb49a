"""The loss's denominator is the response tokens of the *global* batch, whatever the micro-batch
size: one step's gradient, as the optimizer receives it from the workers' own `train_step`,
equals the gradient of (sum of per-token losses over the global batch) / (its response tokens)
computed here in one plain process without DeepSpeed, for every loss kind; and so do the
splits 1 x 8, 2 x 4, 4 x 2 (micro-batch x accumulation), packed (train.packing), grouped by
length (train.group_by_length), and 2 workers x 2 x 2 padded and packed.

A per-micro-batch mean (the authors' normalisation) gives each micro-batch's tokens another
weight in every split here, and a denominator wrong by a constant shows against the plain
gradient (Adam's update would hide it: it is blind to a constant scale, so the gradient is
compared, not parameters after Adam). ZeRO stage 0, no clipping: the optimizer sees the
all-reduced gradients themselves.

Two Ray Train fits (1 worker, 2 workers), every (split, kind) in each: ~2-3 min here.
"""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from stardss.commands.train import training_spec
from stardss.train.batches import collate, plan_for
from stardss.train.kinds import LOSS_KINDS
from tests.helpers import make_job, soft_weighted_rows, tokenizer

KINDS = tuple(LOSS_KINDS)
KL_COEF = 0.7
ROWS = 12  # the first step's global batch: 8 of them
# name -> (workers, micro-batch, accumulation, packing, group_by_length)
SPLITS = {"1x8": (1, 1, 8, False, False), "2x4": (1, 2, 4, False, False),
          "4x2": (1, 4, 2, False, False), "4x2-packed": (1, 4, 2, True, False),
          "2x4-grouped": (1, 2, 4, False, True), "2w-2x2": (2, 2, 2, False, False),
          "2w-2x2-packed": (2, 2, 2, True, False)}


def first_step_gradients(cfg):
    """Ray Train worker: for every split of cfg["splits"] and every loss kind, the gradient
    the optimizer receives at the first step of the plan (rank 0 saves {(split, kind): {name:
    grad}})."""
    import ray.train

    from stardss.train.feed import TableSteps
    from stardss.train.worker import train_step
    from tests.integration.train_loops import _policy_and_reference, _start_worker

    rank, world = _start_worker()
    base = cfg["base"]
    out = {}
    for name in cfg["splits"]:
        _, micro, accum, packing, grouped = SPLITS[name]
        for kind in KINDS:
            spec = replace(base, train=replace(base.train, micro_batch_size=micro,
                                               grad_accum=accum, packing=packing,
                                               group_by_length=grouped),
                           loss=replace(base.loss, kind=kind, kl=replace(
                               base.loss.kl, estimator="k1", coef=KL_COEF)))
            policy, reference = _policy_and_reference(spec, world, rank, 1)
            names = {p: n for n, p in policy.engine.module.named_parameters()}
            seen = {}
            policy.engine.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.update(
                {names[p]: p.grad.detach().clone() for g in opt.param_groups
                 for p in g["params"]}))
            source = TableSteps(cfg["rows"], cfg["plan"], micro, accum, 60.0)
            entry = train_step(policy, reference, source, 0, rank, world, spec)[0]
            out[(name, kind)] = (entry, seen)
    if rank == 0:
        torch.save(out, cfg["out"])
    ray.train.report({"done": 1})


def plain_gradient(model_path, rows, kind):
    """(sum over the rows of the per-token loss) / (their response tokens), differentiated in
    plain torch, one row at a time (no padding, no DeepSpeed); the reference is the initial
    model, as in training, and KL is k1 at the dataset token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total, tokens = 0.0, 0
    for row in rows:
        ids = torch.tensor([row.input_ids])
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logp = logp.gather(-1, ids[0, 1:, None])[:, 0]
        ref_logp = token_logp.detach()  # the initial model is the policy before the step
        ce, kl = -token_logp, token_logp - ref_logp
        w = torch.tensor(row.weights[1:])
        mask = torch.tensor(row.loss_mask[1:], dtype=torch.float32)
        per_token = {"sft": ce, "rs": w * ce, "reweight": w * ce,
                     "dss": w * ce + (1 - w) * KL_COEF * kl, "kl_only": KL_COEF * kl}[kind]
        total = total + (per_token * mask).sum()
        tokens += int(mask.sum())
    (total / tokens).backward()
    return {n: p.grad for n, p in model.named_parameters()}, float(total.detach()) / tokens


@pytest.fixture(scope="module")
def gradients(ray_session, base_model, tmp_path_factory):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    root = tmp_path_factory.mktemp("normalisation")
    job = make_job(root, base_model, "data.sources.0.ratio=1.0", f"data.mix_size={ROWS}",
                   "train.micro_batch_size=1", "train.grad_accum=8", "train.workers=1",
                   "train.zero_stage=0", "train.grad_clip=0")
    rows = soft_weighted_rows(job)
    base = training_spec(job, base_model, base_model, tokenizer().pad_token_id, root, "norm")
    plan = plan_for(base.train, base.seed, len(rows))
    got = {}
    for workers in (1, 2):
        path = root / f"w{workers}.pt"
        splits = [n for n, s in SPLITS.items() if s[0] == workers]
        TorchTrainer(
            first_step_gradients,
            train_loop_config={"base": base, "rows": rows, "plan": plan, "out": str(path),
                               "splits": splits},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name=f"normalisation-w{workers}",
                                 storage_path=str(root / "ray"))).fit()
        got.update(torch.load(path))
    step = [rows[i] for i in plan[0] if i is not None]
    assert len(step) == 8
    # packing does pack: 4 rows of a micro-batch share fewer sequences (data.max_length 128)
    assert collate(step[:4], base.pad_id, job.data.max_length)["input_ids"].shape[0] < 4
    return got, {kind: plain_gradient(base_model, step, kind) for kind in KINDS}, step


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", SPLITS)
def test_a_step_gradient_is_the_global_token_mean(gradients, split, kind):
    got, plain, step = gradients
    entry, grads = got[(split, kind)]
    want, loss = plain[kind]
    assert entry["tokens"] == sum(sum(r.loss_mask[1:]) for r in step)
    assert entry["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert grads.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{split}, {kind}, {name}: {m}")
    assert max(float(v.abs().max()) for v in want.values()) > 1e-3  # not a zero gradient


@pytest.mark.parametrize("kind", KINDS)
def test_packed_and_grouped_splits_match_padded_within_1e_5(gradients, kind):
    got, _, _ = gradients
    _, ref = got[("1x8", kind)]
    for split in ("4x2-packed", "2x4-grouped", "2w-2x2", "2w-2x2-packed"):
        _, grads = got[(split, kind)]
        for name, value in ref.items():
            torch.testing.assert_close(grads[name], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{split}, {kind}, {name}: {m}")
