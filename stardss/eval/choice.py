"""Multiple choice (MMLU / ARC-style items) scored by log-likelihood: for every option, how
likely the evaluated model finds it as the continuation of the item's prompt; the pick is the
most likely. Batched forwards only, no generation, so the score is deterministic and cheap.

The continuation of option j is f"{LETTERS[j]}. {choices[j]}": the sets module lists the
options in the prompt in that very form ("question\\nA. text\\nB. text\\n...\\nAnswer with
the letter of the correct option."), so the model is scored on repeating an option as the
prompt wrote it, letter included (the letter alone would ignore the text; the text alone would
ignore the lettered list the model was asked to answer from).

Prompt and continuation are tokenised as ONE string (with offsets), exactly as the model would
see the answer written after the prompt: tokenising them apart would score token boundaries
that never occur. Where BPE merges the prompt's last characters with the continuation's first
(a prefill ending in " " before "I. ..." gives one token " I"), that token counts as part of
the continuation: a token is scored when it ends after the prompt's last character, the rule
stardss.data.format uses for the trained response tokens. So every continuation character is
scored, and a merged token is conditioned on the prompt without the characters it absorbed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .items import EvalItem
from .metrics import LETTERS
from .render import render_prompt


class ChoiceError(ValueError):
    """A multiple-choice item that cannot be scored (named by its origin)."""


def continuation(item: EvalItem, j: int) -> str:
    """The text option j is scored as: its letter, ". ", its text."""
    return f"{LETTERS[j]}. {item.choices[j]}"


def encode_continuation(tokenizer, prompt: str, text: str) -> tuple[list[int], int]:
    """Token ids of prompt + text (tokenised as one string; the chat template already wrote
    the BOS token, so no special tokens are added) and the index of the first continuation
    token: the first token that ends after len(prompt) (see the module docstring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ChoiceError("multiple-choice scoring needs a fast tokenizer (character offsets)")
    enc = tokenizer(prompt + text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    first = next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), len(ids))
    return ids, first


def choice_logliks(model, tokenizer, items: Sequence[EvalItem], *, batch_size: int,
                   device) -> list[list[float]]:
    """For each item, for each of its choices: the sum of the log-probabilities (natural log)
    `model` gives the choice's continuation tokens after render_prompt(tokenizer, item).

    All (item, choice) sequences are scored together, longest first, `batch_size` sequences a
    forward, right-padded and masked, so the scores do not depend on the batch size or the
    padding (up to float rounding). Log-softmax is taken in float32 whatever the model's dtype.
    The model is put in eval mode for the call and left in the mode it was in."""
    if batch_size < 1:
        raise ValueError(f"choice_logliks: batch_size must be >= 1, got {batch_size}")
    seqs: list[tuple[int, int, list[int], int]] = []  # (item, choice, ids, first scored token)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for i, item in enumerate(items):
        if not item.choices:
            raise ChoiceError(f"{item.origin}: multiple-choice item {item.key} has no choices")
        if len(item.choices) > len(LETTERS):
            raise ChoiceError(f"{item.origin}: {len(item.choices)} choices, at most "
                              f"{len(LETTERS)} (A-Z)")
        prompt = render_prompt(tokenizer, item)
        for j in range(len(item.choices)):
            ids, first = encode_continuation(tokenizer, prompt, continuation(item, j))
            if first == 0:
                raise ChoiceError(f"{item.origin}: empty prompt, nothing to condition choice "
                                  f"{LETTERS[j]} on")
            if limit is not None and len(ids) > limit:
                raise ChoiceError(f"{item.origin}: choice {LETTERS[j]} is {len(ids)} tokens "
                                  f"with its prompt, over the model's {limit}")
            seqs.append((i, j, ids, first))

    scores: list[list[float]] = [[0.0] * len(item.choices) for item in items]
    order = sorted(range(len(seqs)), key=lambda s: -len(seqs[s][2]))  # similar lengths pad less
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked anyway
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = [seqs[s] for s in order[start:start + batch_size]]
                width = max(len(ids) for _, _, ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, (_, _, ids, _) in enumerate(batch):
                    input_ids[r, :len(ids)] = torch.tensor(ids)
                    mask[r, :len(ids)] = 1
                logits = model(input_ids=input_ids.to(device),
                               attention_mask=mask.to(device)).logits
                for r, (i, j, ids, first) in enumerate(batch):
                    # Position t predicts token t + 1: the continuation's tokens are predicted
                    # from positions first - 1 .. len(ids) - 2.
                    logp = logits[r, first - 1:len(ids) - 1].float().log_softmax(-1)
                    target = torch.tensor(ids[first:], device=logp.device).unsqueeze(-1)
                    scores[i][j] = float(logp.gather(-1, target).sum())
    finally:
        model.train(was_training)
    return scores


def pick(logliks: Sequence[float]) -> int:
    """The index of the most likely choice; a tie goes to the first; NaN ranks below
    everything (0 when all are NaN)."""
    if len(logliks) == 0:
        raise ValueError("pick: no choices")
    best = 0
    for j, value in enumerate(logliks):
        if value > logliks[best] or (math.isnan(logliks[best]) and not math.isnan(value)):
            best = j
    return best
