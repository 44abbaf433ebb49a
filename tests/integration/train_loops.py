"""Ray Train worker loops the integration tests run (in a module the workers can import): they
drive the workers' own pieces (`build_policy`, `build_reference`, `train_step`) through several
configurations in one fit, since every fit costs a worker group's start-up."""
from dataclasses import replace

import torch

from stardss.train.kinds import LOSS_KINDS

KINDS = tuple(LOSS_KINDS)
STAGES = (1, 2, 3)


def _start_worker() -> tuple[int, int]:
    """(rank, world) of this Ray Train worker, with one torch thread and DeepSpeed's comms."""
    import ray.train

    from stardss.train.worker import _init_deepspeed

    ctx = ray.train.get_context()
    torch.set_num_threads(1)
    _init_deepspeed()
    return ctx.get_world_rank(), ctx.get_world_size()


def _policy_and_reference(spec, world: int, rank: int, n_steps: int):
    from stardss.train.ds_config import deepspeed_config
    from stardss.train.engine import build_policy
    from stardss.train.reference import build_reference

    ds = deepspeed_config(spec.train, world, {})
    policy = build_policy(spec.model, spec.train, ds, n_steps)
    return policy, build_reference(spec, policy, ds, rank)


def every_kind_and_stage(cfg):
    """cfg: {"base": TrainingSpec, "rows": [TrainRow], "plan": plan, "out": path}."""
    import ray.train

    from stardss.train.feed import TableSteps
    from stardss.train.worker import train_step

    rank, world = _start_worker()
    base = cfg["base"]
    results = {}
    for kind in KINDS:
        for stage in STAGES:
            # k2 has no gradient where policy == reference (the start): kl_only would not
            # move at all; k1 at the dataset token does
            kl = replace(base.loss.kl, estimator="k1" if kind == "kl_only" else "k2")
            spec = replace(base, train=replace(base.train, zero_stage=stage),
                           loss=replace(base.loss, kind=kind, kl=kl))
            policy, reference = _policy_and_reference(spec, world, rank, len(cfg["plan"]))
            source = TableSteps(cfg["rows"], cfg["plan"], 2, spec.train.grad_accum, 60.0)
            losses = [train_step(policy, reference, source, s, rank, world, spec)[0]["loss"]
                      for s in range(len(cfg["plan"]))]
            if stage == 3:  # every rank takes part in gathering the partitions
                params = policy.engine._zero3_consolidated_16bit_state_dict()
            else:
                params = policy.engine.module.state_dict()
            if rank == 0:
                results[f"{kind}/z{stage}"] = (losses, {k: v.detach().clone().cpu()
                                                        for k, v in params.items()})
    if rank == 0:
        torch.save(results, cfg["out"])
    ray.train.report({"done": 1})


def nonfinite_every_stage(cfg):
    """The non-finite step under each ZeRO stage and precision: cfg {"base": TrainingSpec with
    max_nonfinite_steps=1, "rows": [TrainRow] with NaN weights in one row of one step,
    "plan", "configs": [(stage, bf16)], "out": path}. Rank 0 saves per config the
    log entries, whether the parameters moved across the bad step and across a good one, and
    the error line if the step raised."""
    import ray.train

    from stardss.train.feed import TableSteps
    from stardss.train.worker import train_step

    rank, world = _start_worker()
    base = cfg["base"]
    results = {}
    for stage, bf16 in cfg["configs"]:
        spec = replace(base, train=replace(base.train, zero_stage=stage, bf16=bf16))
        policy, reference = _policy_and_reference(spec, world, rank, len(cfg["plan"]))
        source = TableSteps(cfg["rows"], cfg["plan"], spec.train.micro_batch_size,
                            spec.train.grad_accum, 60.0)
        entries, params, error = [], [_params(policy, stage)], None
        try:
            for s in range(len(cfg["plan"])):
                skipped = sum(1 for e in entries if e.get("skipped"))
                entries.append(train_step(policy, reference, source, s, rank, world, spec,
                                          skipped)[0])
                params.append(_params(policy, stage))
        except RuntimeError as err:
            error = str(err)
        if rank == 0:
            moved = [any(not torch.equal(a[k], b[k]) for k in a)
                     for a, b in zip(params, params[1:])]
            results[f"z{stage}/{'bf16' if bf16 else 'fp32'}"] = {
                "entries": entries, "moved": moved, "error": error}
    if rank == 0:
        torch.save(results, cfg["out"])
    ray.train.report({"done": 1})


def _params(policy, stage: int) -> dict:
    """The full parameters, as every rank can see them (ZeRO-3 gathers: every rank calls)."""
    engine = policy.engine
    if stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return {k: v.detach().float().clone().cpu() for k, v in (state or {}).items()}
