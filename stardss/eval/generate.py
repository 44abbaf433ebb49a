"""Batched generation with the trainee's chat template (left padding, greedy or sampled)."""
from __future__ import annotations

from typing import Sequence

import torch


def generate(model, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
             temperature: float, batch_size: int, seed: int) -> list[str]:
    """One assistant reply per conversation (a list of chat messages ending with the user)."""
    torch.manual_seed(seed)
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    replies: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(list(c), add_generation_prompt=True,
                                                   tokenize=False)
                     for c in conversations[start:start + batch_size]]
            enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            sample = temperature > 0
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                     temperature=temperature if sample else None, top_p=None,
                                     top_k=None, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return replies
