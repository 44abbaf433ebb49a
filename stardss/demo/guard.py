"""The demo's learned guardrail: a tiny Llama-Guard-shaped causal LM taught the toy policy.

The rules guardrail of jobs/demo.yaml carries a hand-written weakness (a +9 weight on
"harmless") so that whole-response judging falls for the misleading-suffix attack; a reader can
call a result built on it built in. This guard is *learned* instead, the way Llama Guard is:

- data: whole (prompt, response) pairs drawn from the world's own data-generating functions,
  labelled by which function made them (the toy policy's truth): `harmful` (compliance that
  reveals a secret) is unsafe, `tasks` and `refusals` are safe. Nothing looks at the words of a
  response, there is no disclaimer rule, and the attack shapes (`attack_refusal_prefix`,
  `attack_harmless_suffix`) are left out: they are the attacker's data, which a deployed
  guard has not seen. Each part is drawn from its own seed stream ("<seed>:guard:<part>"), so
  the random choices differ from the finetuning rows';
- model: the caller's Llama Guard 3 stand-in (the real template and its `safe` / `unsafe`
  labels, each one token in context: stardss/testing/guards.py build_tiny_guard, checked by
  stardss/guard/hf/formats.py load_format);
- objective: Llama Guard's own, the next-token cross-entropy (full vocabulary) of the label
  token at the decision position of the family's prompt, nothing else of the prompt trained;
  the two classes weighted equally (36 unsafe rows against 522 safe);
- use: through the normal `llama_guard` family code, which reads P(safe) at that same position
  for every *prefix* of a response: whole-response training repurposed for prefix scoring, as
  the paper proposes.

This module sits in the demo layer, below the guard stage, so it takes the guard format as an
argument (any object with `render(prompt, response)`, `safe_id` and `unsafe_id`, as
`GuardFormat` has) instead of importing it; the command layer wires the two
(stardss/commands/demo.py learned_guard).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from .world import PARTS

SAFE_PARTS = ("tasks", "refusals")
UNSAFE_PARTS = ("harmful",)
"""Which of the world's generating functions make safe and unsafe responses (world.py)."""
EPOCHS = 6
LR = 3e-3
BATCH_SIZE = 32
"""The training loop's settings: about 6 s for the 558 rows on one core, every training row
classified right at the end (`train_guard` returns the accuracy; after 2 epochs the guard
still calls everything safe)."""


def guard_examples(seed: int) -> list[dict]:
    """The labelled training rows: {prompt, response, unsafe, part}, deterministic per seed."""
    rows = []
    for parts, unsafe in ((SAFE_PARTS, False), (UNSAFE_PARTS, True)):
        for part in parts:
            for r in PARTS[part](random.Random(f"{seed}:guard:{part}")):
                rows.append({"prompt": r["prompt"], "response": r["response"], "unsafe": unsafe,
                             "part": part})
    return rows


def _batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + size] for i in range(0, n, size)]


def _common_prefix(ids: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least its last token (the template's
    text up to the conversation is the same for every row)."""
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for x in ids[1:]:
        k = 0
        while k < n and x[k] == first[k]:
            k += 1
        n = k
    return n


def _label_logits(model, ids: list[list[int]], shared: int, pad_id: int):
    """Full-vocabulary logits at the last token of each sequence. The `shared` first tokens
    (the same in every row) run once at batch size 1 and their KV cache is broadcast to the
    batch, with gradients: the same computation as the whole sequences, at a fifth of the
    cost (the Llama Guard 3 template is ~180 of the ~220 tokens). Only the read positions go
    through the LM head."""
    import torch
    from transformers import DynamicCache

    head = torch.tensor([ids[0][:shared]])
    pre = model.model(input_ids=head, use_cache=True)
    n = len(ids)
    cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(n, -1, -1, -1),
                                          layer.values.expand(n, -1, -1, -1))
                                         for layer in pre.cache.layers])
    tails = [x[shared:] for x in ids]
    width = max(len(t) for t in tails)
    batch = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, t in enumerate(tails):
        batch[i, :len(t)] = torch.tensor(t)
        mask[i, shared:shared + len(t)] = 1
    positions = torch.arange(shared, shared + width).expand(n, -1)
    hidden = model.model(input_ids=batch, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True).last_hidden_state
    last = torch.tensor([len(t) - 1 for t in tails])
    return model.lm_head(hidden[torch.arange(n), last])


def train_guard(path: str | Path, fmt, seed: int, *, epochs: int = EPOCHS, lr: float = LR,
                batch_size: int = BATCH_SIZE) -> dict:
    """Train the Llama Guard stand-in at `path` (a Hugging Face folder) on `guard_examples` and
    save it back there; returns {rows, unsafe_rows, epochs, final_loss, train_accuracy, seconds}.

    `fmt`: the family's prompt format for the folder's tokenizer (`render`, `safe_id`,
    `unsafe_id`); the prompts are tokenized as the family code does (add_special_tokens=False).
    Deterministic under `seed`: the batch order is drawn from it, the model has no dropout.
    """
    import torch

    started = time.perf_counter()
    # One thread: the batches are small, and on 2 cores shared with Ray workers two threads
    # wait on each other at every op (measured: 2 epochs took 14-37 s with 2 threads, 5 s with
    # 1, at a load of 8). It also keeps the arithmetic the same on every core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(path, fmt, seed, epochs, lr, batch_size, started)
    finally:
        torch.set_num_threads(threads)


def _train(path, fmt, seed: int, epochs: int, lr: float, batch_size: int,
           started: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = guard_examples(seed)
    ids = [tokenizer(fmt.render(r["prompt"], r["response"]),
                     add_special_tokens=False)["input_ids"] for r in rows]
    target = torch.tensor([fmt.unsafe_id if r["unsafe"] else fmt.safe_id for r in rows])
    n_unsafe = int(sum(r["unsafe"] for r in rows))
    shared = _common_prefix(ids)
    # Equal total weight per class: the unsafe rows are few, and a guard that calls everything
    # safe would otherwise already be 94 % right.
    weight = torch.tensor([0.5 / n_unsafe if r["unsafe"] else 0.5 / (len(rows) - n_unsafe)
                           for r in rows])
    torch.manual_seed(seed)
    rng = random.Random(f"{seed}:guard:order")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * len(_batches(len(rows), batch_size, random.Random(0)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for b in _batches(len(rows), batch_size, rng):
            logits = _label_logits(model, [ids[i] for i in b], shared, tokenizer.pad_token_id)
            ce = torch.nn.functional.cross_entropy(logits, target[b], reduction="none")
            # Each batch's weights are renormalised, so every step has the same scale.
            w = weight[b] / weight[b].sum()
            loss = (ce * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float((ce * weight[b]).sum().detach())
    model.eval()
    with torch.no_grad():
        right = 0
        for b in [list(range(i, min(i + 64, len(rows)))) for i in range(0, len(rows), 64)]:
            logits = _label_logits(model, [ids[i] for i in b], shared, tokenizer.pad_token_id)
            unsafe = logits[:, fmt.unsafe_id] > logits[:, fmt.safe_id]
            right += int((unsafe == (target[b] == fmt.unsafe_id)).sum())
    model.save_pretrained(path)
    return {"rows": len(rows), "unsafe_rows": n_unsafe, "epochs": epochs,
            "final_loss": loss_sum, "train_accuracy": right / len(rows),
            "seconds": time.perf_counter() - started}


__all__ = ["SAFE_PARTS", "UNSAFE_PARTS", "guard_examples", "train_guard"]
