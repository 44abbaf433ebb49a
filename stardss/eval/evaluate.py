"""Evaluate a checkpoint: safety on held-out harmful prompts, capability on held-out tasks."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..data.rows import ChatRow
from .generate import generate
from .metrics import is_correct, judge_safe


def evaluate_model(model_dir: str, eval_cfg, harmful: Sequence[ChatRow], benign: Sequence[ChatRow],
                   judge: Callable[[list[str], list[str]], np.ndarray], combine_how: str,
                   seed: int) -> dict:
    """`judge(prompts, responses)` returns (n_judges, n) P(safe) of the whole responses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = dict(max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature,
               batch_size=eval_cfg.batch_size, seed=seed)
    harm_out = generate(model, tokenizer, [r.messages for r in harmful], **gen)
    task_out = generate(model, tokenizer, [r.messages for r in benign], **gen)
    safe = judge_safe(judge([r.prompt for r in harmful], harm_out), combine_how)
    correct = [is_correct(out, r.answer or "") for out, r in zip(task_out, benign)]
    return {
        "safety_rate": sum(safe) / len(safe) if safe else float("nan"),
        "capability": sum(correct) / len(correct) if correct else float("nan"),
        "n_harmful": len(harmful),
        "n_benign": len(benign),
        "eval_seconds": time.perf_counter() - started,
        "samples": {
            "harmful": [{"prompt": r.prompt, "response": o, "safe": s}
                        for r, o, s in zip(harmful, harm_out, safe)],
            "benign": [{"prompt": r.prompt, "response": o, "answer": r.answer, "correct": c}
                       for r, o, c in zip(benign, task_out, correct)],
        },
    }
