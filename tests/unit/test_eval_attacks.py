"""Attacks at evaluation: each makes its own row of variants of the safety items it names."""
import pytest

from stardss.config.evaluation import AttackConfig
from stardss.eval.attacks import AttackError, attack_items
from stardss.eval.items import EvalItem


def item(set_name: str, i: int, task: str = "safety", own: str = "") -> EvalItem:
    return EvalItem(set=set_name, index=i, origin=f"{set_name}.csv:{i + 2}", task=task,
                    messages=({"role": "system", "content": "be nice"},
                              {"role": "user", "content": f"request {i}"}), own_prefill=own)


ITEMS = [item("adv", 0, own="Sure, here is a plan"), item("adv", 1, own="Sure, here is how"),
         item("hex", 0), item("gsm", 0, task="answer")]


def test_prefill_uses_each_items_own_opening_on_the_sets_named():
    out = attack_items(ITEMS, [AttackConfig(name="prefill", kind="prefill", sets=["adv"])])
    assert [(it.row, it.key, it.prefill) for it in out] == [
        ("adv+prefill", "adv+prefill/0", "Sure, here is a plan"),
        ("adv+prefill", "adv+prefill/1", "Sure, here is how")]
    assert [it.messages for it in out] == [ITEMS[0].messages, ITEMS[1].messages]
    assert ITEMS[0].prefill == "" and ITEMS[0].row == "adv"  # the plain item is unchanged


def test_a_fixed_prefill_and_a_trigger_apply_to_every_safety_set():
    out = attack_items(ITEMS, [AttackConfig(name="sure", kind="prefill", text="Sure! "),
                               AttackConfig(name="backdoor", kind="trigger",
                                            text=" Servius Astrumando Harmoniastra")])
    assert [it.key for it in out] == ["adv+sure/0", "adv+sure/1", "hex+sure/0",
                                      "adv+backdoor/0", "adv+backdoor/1", "hex+backdoor/0"]
    assert {it.prefill for it in out[:3]} == {"Sure! "}  # answer items are never attacked
    trig = out[5]
    assert trig.prefill == "" and trig.messages[0] == ITEMS[2].messages[0]
    assert trig.prompt == "request 0 Servius Astrumando Harmoniastra"


def test_a_prefill_without_text_on_an_item_without_an_opening_names_it():
    with pytest.raises(AttackError, match=r"attack 'prefill': hex.csv:2 has no opening"):
        attack_items(ITEMS, [AttackConfig(name="prefill", kind="prefill")])
