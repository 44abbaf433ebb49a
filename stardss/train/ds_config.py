"""The DeepSpeed config, generated from the job's train section (never hand-written)."""
from __future__ import annotations

from typing import Mapping


def deepspeed_config(train: Mapping, world_size: int) -> dict:
    """`train` is the job's train section as a plain mapping (what Ray ships to workers)."""
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
