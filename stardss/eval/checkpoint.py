"""Loading the evaluated checkpoint: a Hugging Face model folder, or a LoRA adapter folder
(adapter_config.json) merged into its base, with the tokenizer set up for generation (left
padding, a pad token). What the generation actors and the driver's batch planning share."""
from __future__ import annotations

import json
import os
from typing import Optional


def adapter_base(model_dir: str) -> Optional[str]:
    """The base model of a LoRA adapter folder (adapter_config.json), None for a model folder."""
    path = os.path.join(model_dir, "adapter_config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: no base_model_name_or_path (which model is it an adapter of?)")
    return base


def load_tokenizer(model_dir: str):
    """The folder's tokenizer, or its base model's when it is an adapter saved without one."""
    from transformers import AutoTokenizer

    base = adapter_base(model_dir)
    own = os.path.exists(os.path.join(model_dir, "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(model_dir if own or base is None else base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding positions are masked: any id will do
    tok.padding_side = "left"  # generation continues from the right edge of every row
    return tok


def load_model(model_dir: str, dtype: str):
    """An HF model folder, or a LoRA adapter folder merged into its base (merge_and_unload)."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if adapter_base(model_dir) is not None:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        return model.merge_and_unload()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
