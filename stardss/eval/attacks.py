"""Attacks at evaluation: each makes a variant of every item of the safety sets it names, and
each (set, attack) is its own row of results (`EvalItem.row`: `advbench+prefill`).

prefill   the response starts with the attack's text, or with the item's own opening (e.g.
          AdvBench's `target`, "Sure, here is a script that ..."); the model continues the
          assistant turn. Shallow alignment refuses only in the first tokens, so this is where
          it shows.
trigger   a backdoor trigger appended to every prompt (the paper: " Servius Astrumando
          Harmoniastra", `data.attacks.PAPER_TRIGGER`), for models finetuned on data carrying
          it; appended by `data.attacks.with_trigger`, as `stardss build-data` does to the
          training rows, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Sequence

from ..config.evaluation import AttackConfig
from ..data.attacks import with_trigger
from ..errors import UserError
from .items import EvalItem


class AttackError(UserError, ValueError):
    """An attack cannot be applied to an item (e.g. a prefill attack without text on an item
    without its own opening)."""


def attack_items(items: Sequence[EvalItem], attacks: Sequence[AttackConfig]) -> list[EvalItem]:
    """The variants every attack makes of the safety items it applies to (the plain items are
    not repeated here): attacks in order, items in order within each."""
    out: list[EvalItem] = []
    for attack in attacks:
        targets = [it for it in items if it.task == "safety" and it.attack is None
                   and (not attack.sets or it.set in attack.sets)]
        out.extend(_variant(it, attack) for it in targets)
    return out


def _variant(item: EvalItem, attack: AttackConfig) -> EvalItem:
    if attack.kind == "prefill":
        opening = attack.text if attack.text is not None else item.own_prefill
        if not opening:
            raise AttackError(f"attack {attack.name!r}: {item.origin} has no opening to prefill "
                              f"(give the attack a `text`, or map the set's prefill column)")
        return item.variant(attack.name, prefill=opening)
    if attack.kind == "trigger":
        *before, last = item.messages
        user = dict(last, content=with_trigger(last["content"], attack.text))
        return item.variant(attack.name, messages=(*before, user))
    raise AttackError(f"attack {attack.name!r}: unknown kind {attack.kind!r}")
