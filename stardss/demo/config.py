"""The demo's job: every section of a job (stardss.config.schema) plus `demo`, which says how
the demo builds its world and which methods it compares. `stardss demo` reads its job with
this schema; the other commands read the same file with the plain one (so a `demo:` section
belongs only in a job for `stardss demo`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from ..config.fields import bounded, choice
from ..config.schema import JobConfig
from ..train.kinds import LOSS_KINDS


@dataclass
class TinyModelConfig:
    """A Llama-architecture model built from a config: the embedded demo's and the tests' model."""

    hidden_size: int = bounded(128, at_least=1)
    """Width of the residual stream."""
    intermediate_size: int = bounded(256, at_least=1)
    """Width of the MLP."""
    num_layers: int = bounded(2, at_least=1)
    """Decoder layers."""
    num_heads: int = bounded(4, at_least=1)
    """Attention heads (key/value heads equal)."""
    vocab_size: int = bounded(1024, at_least=1)
    """Size of the byte-level BPE vocabulary trained for the demo tokenizer."""
    max_position_embeddings: int = bounded(256, at_least=1)
    """Longest sequence the model accepts."""


HARM_SHAPES = ("attack_harmless_suffix", "attack_refusal_prefix", "harmful")
"""The world's harmful parts a sweep can mix in (stardss/demo/world.py PARTS)."""


@dataclass
class SweepConfig:
    """`stardss sweep`: the paper's trade-off figure on the toy world. Each method trains on
    tasks mixed with each harmful shape at each harm ratio (the share of harmful rows)."""

    ratios: List[float] = bounded(at_least=0, at_most=1,
                                  default_factory=lambda: [0.0, 0.1, 0.3, 0.6, 1.0])
    """Harm ratios: 0 = tasks only (one run per method, shared by every shape), 1 = harmful
    rows only."""
    shapes: List[str] = field(default_factory=lambda: list(HARM_SHAPES[:2]),
                              metadata={"choices": HARM_SHAPES})
    """Which harmful rows are mixed in: the misleading-suffix and refusal-prefix attacks
    (default), or plain harmful answers."""
    methods: List[str] = field(default_factory=lambda: ["sft", "rs", "dss"],
                               metadata={"choices": tuple(LOSS_KINDS)})
    """Finetuning methods compared at every point."""
    mix_size: int = bounded(320, at_least=1)
    """Rows in every mixture (a part smaller than its share is repeated)."""
    epochs: int = bounded(4, at_least=1)
    """Epochs of every finetuning run (train.epochs of the sweep's runs)."""


@dataclass
class DemoConfig:
    align_epochs: int = bounded(8, at_least=1)
    """Epochs of the alignment SFT that makes the reference model."""
    align_lr: float = bounded(3e-3, above=0)
    """Peak learning rate of the alignment SFT."""
    methods: List[str] = field(default_factory=lambda: ["sft", "rs", "dss"],
                               metadata={"choices": tuple(LOSS_KINDS)})
    """Finetuning methods (loss kinds) compared on the poisoned mixture."""
    guard: str = choice("learned", ("learned", "rules"))
    """The guardrail `stardss demo` trains against (and its `training-guard` judge). learned: a
    tiny Llama Guard 3 stand-in (the real template and labels) the demo trains on the world's
    whole responses labelled by the toy policy, written to <out>/guard and scored through the
    `llama_guard` family code (stardss/demo/guard.py). rules: the job's own `guardrails` (the
    hand-written rules of jobs/demo.yaml, with their disclaimer weakness)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the model the demo builds (then aligns: the base of every method)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """What `stardss sweep` trains (the demo itself ignores it)."""


@dataclass
class DemoJobConfig(JobConfig):
    demo: DemoConfig = field(default_factory=DemoConfig)
    """How `stardss demo` builds its world and what it compares."""
