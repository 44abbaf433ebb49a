"""The DeepSpeed configs: the policy's generated from the job's train section, then the user's
own DeepSpeed JSON (`train.deepspeed_json`) and entries (`train.deepspeed`) merged over it;
and the frozen reference's (ZeRO-3 partitioned like the policy, no optimizer)."""
from __future__ import annotations

import copy
import json
from typing import Mapping, Optional

from ..config.schema import TrainConfig

# The batch geometry is the job's (the step plan and the loss normalisation are built on it):
# a user's DeepSpeed section may repeat these keys but not change them.
_JOB_OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def user_deepspeed(train: TrainConfig) -> dict:
    """The user's DeepSpeed settings: the JSON file, then `train.deepspeed` over it. Read on
    the driver (the file need not exist on the workers). HF-style "auto" values are dropped:
    the generated config fills them."""
    user: dict = {}
    path = train.deepspeed_json
    if path:
        try:
            with open(path) as f:
                user = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"train.deepspeed_json: cannot read {path!r}: {err}") from None
        if not isinstance(user, dict):
            raise ValueError(f"train.deepspeed_json: {path!r} holds a {type(user).__name__}, "
                             f"not a JSON object")
    return _drop_auto(_merge(user, train.deepspeed))


def deepspeed_config(train: TrainConfig, world_size: int,
                     user: Optional[Mapping] = None) -> dict:
    """The policy's DeepSpeed config; `user` is `user_deepspeed(train)`."""
    config = _generated(train, world_size)
    user = dict(user or {})
    for key in _JOB_OWNED:
        if key in user and user[key] != config[key]:
            raise ValueError(f"train.deepspeed.{key}={user[key]!r} disagrees with the job "
                             f"({config[key]!r} from train.micro_batch_size, train.grad_accum "
                             f"and train.workers): set those instead")
    return _merge(config, user)


def reference_config(policy_config: Mapping, offload: bool, pin_memory: bool = False) -> dict:
    """An inference-only engine for the frozen reference: the policy's precision and ZeRO-3
    partitioning (stage 0 otherwise: every rank holds a full copy), no optimizer state."""
    zero = policy_config.get("zero_optimization", {})
    stage = 3 if zero.get("stage") == 3 else 0
    ref_zero: dict = {"stage": stage}
    if stage == 3:
        for key in ("stage3_param_persistence_threshold", "stage3_prefetch_bucket_size"):
            if key in zero:
                ref_zero[key] = zero[key]
        if offload:
            ref_zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "train_micro_batch_size_per_gpu": policy_config["train_micro_batch_size_per_gpu"],
        "train_batch_size": policy_config["train_batch_size"],
        "gradient_accumulation_steps": policy_config["gradient_accumulation_steps"],
        "zero_optimization": ref_zero,
        "bf16": dict(policy_config.get("bf16", {"enabled": False})),
        "steps_per_print": 2**31 - 1,
    }


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _drop_auto(d: Mapping) -> dict:
    return {k: _drop_auto(v) if isinstance(v, Mapping) else v for k, v in d.items()
            if v != "auto"}


def _generated(train: TrainConfig, world_size: int) -> dict:
    zero: dict = {"stage": train.zero_stage}
    # Pinned host memory speeds up GPU <-> CPU copies; there is no such copy on a CPU run.
    pin = train.use_gpu
    extra = {}
    if train.offload.optimizer != "none":
        zero["offload_optimizer"] = {"device": train.offload.optimizer, "pin_memory": pin}
        if not pin:  # CPU-only: torch's AdamW steps the offloaded state (engine._optimizer)
            extra["zero_force_ds_cpu_optimizer"] = False
    if train.offload.params != "none":
        zero["offload_param"] = {"device": train.offload.params, "pin_memory": pin}
    if train.zero_stage == 3:
        # Gather full weights on save so a Hugging Face folder can be written from rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": train.bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        **extra,
    }
