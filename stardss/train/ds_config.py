"""The DeepSpeed config: generated from the job's train section, then the user's own DeepSpeed
settings (`train.deepspeed`, e.g. offload or communication options) merged over it."""
from __future__ import annotations

import copy
from typing import Mapping

# The batch geometry is the job's (the step plan and the loss normalisation are built on it):
# a user's DeepSpeed section may repeat these keys but not change them.
_JOB_OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def deepspeed_config(train: Mapping, world_size: int) -> dict:
    """`train` is the job's train section as a plain mapping (what Ray ships to workers)."""
    config = _generated(train, world_size)
    user = dict(train.get("deepspeed") or {})
    for key in _JOB_OWNED:
        if key in user and user[key] != config[key]:
            raise ValueError(f"train.deepspeed.{key}={user[key]!r} disagrees with the job "
                             f"({config[key]!r} from train.micro_batch_size, train.grad_accum "
                             f"and train.workers): set those instead")
    return _merge(config, user)


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _generated(train: Mapping, world_size: int) -> dict:
    zero: dict = {"stage": int(train["zero_stage"])}
    if train["zero_stage"] == 3:
        # Gather full weights on save so a Hugging Face folder can be written from rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": int(train["micro_batch_size"]),
        "gradient_accumulation_steps": int(train["grad_accum"]),
        "train_batch_size": int(train["micro_batch_size"] * train["grad_accum"] * world_size),
        "gradient_clipping": float(train["grad_clip"]),
        "zero_optimization": zero,
        "bf16": {"enabled": bool(train["bf16"])},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
