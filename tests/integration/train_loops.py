"""Ray Train worker loops the integration tests run (in a module the workers can import): they
drive the workers' own pieces (`build_policy`, `build_reference`, `train_step`) through several
configurations in one fit, since every fit costs a worker group's start-up."""
import copy

import torch

from stardss.train.loss import KINDS

STAGES = (1, 2, 3)


def every_kind_and_stage(cfg):
    import ray.train

    from stardss.train.ds_config import deepspeed_config
    from stardss.train.engine import build_policy
    from stardss.train.feed import TableSteps
    from stardss.train.reference import build_reference
    from stardss.train.worker import _init_deepspeed, train_step

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    _init_deepspeed()
    results = {}
    for kind in KINDS:
        for stage in STAGES:
            config = copy.deepcopy(cfg["base"])
            config["train"]["zero_stage"] = stage
            config["loss"]["kind"] = kind
            # k2 has no gradient where policy == reference (the start): kl_only would not
            # move at all; k1 at the dataset token does
            config["loss"]["kl"]["estimator"] = "k1" if kind == "kl_only" else "k2"
            ds = deepspeed_config(config["train"], world, {})
            policy = build_policy(config, ds, len(cfg["plan"]))
            reference = build_reference(config, policy, ds, rank)
            source = TableSteps(cfg["rows"], cfg["plan"], 2, config["train"]["grad_accum"])
            losses = [train_step(policy, reference, source, s, rank, world, config)[0]["loss"]
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
