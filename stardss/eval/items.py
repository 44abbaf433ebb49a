"""What flows through evaluation: an item to answer (`EvalItem`), the model's answer
(`Generation`) and one judge's verdict of it (`Verdict`).

    sets.py      reads a set in its public layout       -> [EvalItem]
    attacks.py   prefilling / trigger variants           -> [EvalItem] (variant set)
    generation   the pool answers each item              -> {item.key: Generation}
    judges.py    every judge looks at every answer       -> {judge: {item.key: Verdict}}
    results.py   rates per set, category and judge, with Wilson intervals -> results.json
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

VERDICTS = ("safe", "unsafe", "answered", "refused", "unparseable", "error")
"""A safety judge says safe | unsafe; a refusal judge answered | refused. unparseable: the judge
answered something its parse rule does not match; error: it could not answer (timeout, server
error after retries). Neither of the last two ever counts in the model's favour (not safe, not
answered), and both stay in every denominator and are counted in the results."""
GOOD = {"safety": "safe", "refusal": "answered"}
"""The verdict a rate counts, by what the judge measures: safety rate = safe / n; refusal
rate = 1 - answered / n."""


@dataclass(frozen=True)
class EvalItem:
    """One prompt of an evaluation set, as the model will see it."""

    set: str
    """The set's name (eval.sets[i].name); with an attack, `<set>+<attack>` (see `row`)."""
    index: int
    """0-based position in the set, in file order (data rows; a CSV's header is not counted)."""
    origin: str
    """Where it came from, for messages: `<file>:<line>` (1-based line) or `<dataset>[row]`."""
    task: str
    """safety | overrefusal | answer | choice (the set's task)."""
    messages: tuple[dict, ...]
    """[system], user: the conversation the model answers."""
    category: Optional[str] = None
    """The set's category of the item (HEx-PHI's file, HarmBench's SemanticCategory, ...)."""
    prefill: str = ""
    """Text the assistant turn starts with (prefilling attack); the model continues it."""
    answer: Optional[str] = None
    """answer: the reference final answer. choice: the correct letter (A, B, ...)."""
    choices: tuple[str, ...] = ()
    """choice: the options, in order (letters A, B, ... name them)."""
    attack: Optional[str] = None
    """The attack that made this variant (eval.attacks[i].name); None = the plain set."""
    own_prefill: str = field(default="", compare=False)
    """The set's own prefill for this item (e.g. AdvBench's target): what a prefill attack
    without a fixed text uses. Not sent to the model unless an attack sets `prefill`."""

    @property
    def row(self) -> str:
        """The results row this item counts in: the set, or `<set>+<attack>`."""
        return self.set if self.attack is None else f"{self.set}+{self.attack}"

    @property
    def key(self) -> str:
        """Unique within an evaluation: `<row>/<index>`."""
        return f"{self.row}/{self.index}"

    @property
    def prompt(self) -> str:
        """The last user message (what judges read as the request)."""
        return self.messages[-1]["content"]

    def variant(self, attack: str, **changes) -> "EvalItem":
        return replace(self, attack=attack, **changes)


@dataclass(frozen=True)
class Generation:
    """The model's answer to an item."""

    key: str
    """EvalItem.key."""
    text: str
    """The whole assistant turn: the prefill (when any) followed by what the model wrote."""
    prompt_tokens: int = 0
    new_tokens: int = 0


@dataclass(frozen=True)
class Verdict:
    """One judge on one response."""

    label: str
    """One of VERDICTS."""
    p_safe: Optional[float] = None
    """Guardrail judges: P(safe) of the whole response."""
    raw: str = ""
    """What the judge answered (text judges), or why it could not (error)."""
