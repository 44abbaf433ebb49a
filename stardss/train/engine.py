"""The policy a Ray Train worker trains: the model (optionally with LoRA adapters), AdamW, the
paper's schedule, wrapped in a DeepSpeed engine.

Under ZeRO-3 the model is loaded partitioned: `HfDeepSpeedConfig` makes `from_pretrained` build
it under `deepspeed.zero.Init`, so no rank ever holds the whole model (an 8B model would not
fit on one GPU otherwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .hidden import choose_head


def cosine_schedule(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def torch_dtype(bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float32


def load_causal_lm(path: str, dtype: torch.dtype, ds_config: dict):
    """The model at `path`; partitioned while loading when ds_config is ZeRO-3. Returns the
    model and the object that must stay alive while DeepSpeed uses the model."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = None
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        # transformers keeps only a weak reference to this object: it must outlive the model.
        keep_alive = HfDeepSpeedConfig(ds_config)
    else:  # a ZeRO-3 config registered earlier in this process must not partition this one
        unset_hf_deepspeed_config()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, keep_alive


def add_lora(model, lora):
    """Wrap `model` with PEFT LoRA adapters (model.lora); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    targets = list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        task_type="CAUSAL_LM",
                        target_modules="all-linear" if targets == ["all-linear"] else targets)
    return get_peft_model(model, config)


@dataclass
class Policy:
    engine: Any
    """The DeepSpeed engine (engine.module is the model, a PeftModel with LoRA)."""
    scheduler: Any
    """The learning-rate schedule DeepSpeed steps with the optimizer."""
    lora: bool
    """Adapters train, the base weights are frozen."""
    keep_alive: Any = None
    head: Any = None
    """hidden states -> logits (hidden.choose_head): the loss turns them into logits a chunk
    of positions at a time."""


def build_policy(model_cfg, train, ds_config: dict, n_steps: int) -> Policy:
    """The trainee of a worker: `model_cfg` (ModelConfig: the folder to start from, LoRA) and
    `train` (TrainConfig: optimizer and schedule)."""
    import deepspeed

    lora = model_cfg.lora
    model, keep_alive = load_causal_lm(model_cfg.name_or_path, torch_dtype(train.bf16),
                                       ds_config)
    if lora.r:
        model = add_lora(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, train)
    warmup = int(train.warmup_ratio * n_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, n_steps, warmup, train.lr, train.min_lr)
        / train.lr)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    head = choose_head(engine, rank0_warning)
    return Policy(engine, scheduler, bool(lora.r), keep_alive, head)


def rank0_warning(line: str) -> None:
    """A warning line from rank 0 of the worker group only (every rank finds the same)."""
    import sys

    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        sys.stderr.write(f"[stardss] warning: {line}\n")


def _optimizer(params, train):
    kwargs = dict(lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if train.offload.optimizer != "none" and train.use_gpu:
        # With the optimizer state offloaded from the GPU the step runs on the host: DeepSpeed's
        # vectorised CPU Adam is several times faster than torch's. (A CPU-only run keeps
        # torch's AdamW: its state is in host memory anyway, and CPU Adam compiles for minutes.)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)
