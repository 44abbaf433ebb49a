"""A forward pass that stops before the output head, so a step's logits never exist whole.

The logits of a micro-batch are (B, T, V): 4 x 2048 x 128k fp32 is 4.2 GB for Llama 3's
vocabulary, and the gradient of the log-softmax is as large again. The loss (loss.py) instead
takes the final hidden states (B, T, H) and the model's output head, and turns one chunk of
positions at a time into logits -> log-softmax -> CE / KL terms, under activation
checkpointing: only one chunk's (B, chunk, V) exists at a time, forward and backward. The
reference model's log-probs come from its hidden states the same way.

`forward_hidden` runs the model's own forward (the DeepSpeed engine's, with its ZeRO-3 hooks)
asking for no logits (`logits_to_keep` = no position) and its last hidden state. The head is
the model's output embedding plus the post-head transforms some families apply (Gemma's final
soft-capping, Granite's logits scaling, Cohere's logit scale). A family with a transform not
listed here is found by `head_reproduces_logits` on a few tokens when the model is loaded;
such a model falls back to whole logits (a warning says so) rather than train on wrong ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

NO_POSITIONS = torch.zeros(0, dtype=torch.long)
"""`logits_to_keep` that keeps no position: the forward pass computes no logits."""


@dataclass
class Hidden:
    """One forward pass's output before the head.

    states  (B, T, H) the final hidden states (after the last norm), or (B, T, V) logits
            themselves when `head` is the identity (a model that must use whole logits)
    head    maps states[:, s:e] (B, e-s, H) to that chunk's logits (B, e-s, V)
    """

    states: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]

    def __getitem__(self, index) -> Hidden:
        """The same head over a slice of positions, e.g. hidden[:, :-1]."""
        return Hidden(self.states[index], self.head)

    @property
    def shape(self) -> torch.Size:
        return self.states.shape

    @property
    def requires_grad(self) -> bool:
        return self.states.requires_grad


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def of_logits(logits: torch.Tensor) -> Hidden:
    """Whole logits (B, T, V) seen as hidden states under the identity head."""
    return Hidden(logits, identity)


def _unwrap(module):
    """The Hugging Face model under a DeepSpeed engine and/or a PEFT wrapper."""
    module = getattr(module, "module", module)  # DeepSpeedEngine
    get_base = getattr(module, "get_base_model", None)  # PeftModel
    return get_base() if callable(get_base) else module


def output_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (B, t, H) -> logits (B, t, V) as the model's forward computes them. The head
    module is called (not its weight used) so ZeRO-3 gathers its partitioned weight."""
    model = _unwrap(model)
    linear, config = model.get_output_embeddings(), model.config
    text = getattr(config, "get_text_config", lambda: config)()
    softcap = getattr(text, "final_logit_softcapping", None)  # Gemma 2/3
    divide = getattr(text, "logits_scaling", None)  # Granite
    multiply = getattr(text, "logit_scale", None)  # Cohere

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden)
        if multiply is not None:
            logits = logits * multiply
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return head


def forward_hidden(module, inputs: dict, head=None) -> Hidden:
    """The final hidden states of `module(**inputs)` (a DeepSpeed engine, a PEFT or a Hugging
    Face model) and its head; `head=identity` asks for whole logits instead (the fallback)."""
    if head is identity:
        return of_logits(module(**inputs).logits)
    keep = NO_POSITIONS.to(inputs["input_ids"].device)
    out = module(**inputs, output_hidden_states=True, logits_to_keep=keep)
    return Hidden(out.hidden_states[-1], head if head is not None else output_head(module))


def head_reproduces_logits(module, inputs: dict, atol: float = 1e-4) -> bool:
    """Whether head(hidden states) equals the model's own logits on `inputs` (a few tokens):
    False for a family with a post-head transform `output_head` does not know."""
    with torch.no_grad():
        want = module(**inputs).logits.float()
        hidden = forward_hidden(module, inputs)
        got = hidden.head(hidden.states).float()
    return got.shape == want.shape and bool(torch.allclose(got, want, atol=atol, rtol=1e-4))


def choose_head(module, warn: Callable[[str], None]):
    """The head a worker uses for `module`: its output head when that reproduces the model's
    logits on a probe of 8 tokens, else `identity` (whole logits) after a warning. Every rank
    runs the same probe (under ZeRO-3 a forward is a collective)."""
    model = _unwrap(module)
    device = next(model.parameters()).device
    ids = (torch.arange(8, device=device) * 7919 % max(model.config.vocab_size, 1))[None]
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if head_reproduces_logits(module, probe):
        return output_head(module)
    warn(f"{type(model).__name__}: its logits are not its output head applied to its last "
         f"hidden state (a post-head transform stardss does not know): the loss uses whole "
         f"logits, whose memory grows with batch x length x vocabulary")
    return identity
