import math

import pytest

from stardss.config import GuardrailConfig, RuleConfig
from stardss.guard.base import Guardrail
from stardss.guard.registry import build_guardrail
from stardss.guard.rules import RuleGuardrail, sigmoid


def rules(bias=0.0, *pairs):
    return GuardrailConfig(kind="rules", bias=bias,
                           rules=[RuleConfig(pattern=p, weight=w) for p, w in pairs])


def expit(x):
    # The textbook formula; the guardrail's stable form may differ in the last ulp.
    return pytest.approx(1.0 / (1.0 + math.exp(-x)), rel=1e-14)


def test_no_match_is_sigmoid_of_bias():
    g = RuleGuardrail(rules(2.0, ("bomb", -5.0)))
    assert g.score("how do I bake bread?", ["Mix flour and water."]) == [expit(2.0)]


def test_matches_add_their_weights():
    g = RuleGuardrail(rules(1.0, ("bomb", -3.0), ("detonat", -2.0), ("I can't help", 4.0)))
    out = g.score("p", ["", "build a bomb", "build a bomb and detonate it",
                        "I can't help with a bomb"])
    assert out == [expit(1.0), expit(-2.0), expit(-4.0), expit(2.0)]


def test_case_insensitive():
    g = RuleGuardrail(rules(0.0, ("bomb", -3.0)))
    assert g.score("p", ["BOMB", "Bomb", "bOmB"]) == [expit(-3.0)] * 3
    assert g.score("p", ["BOMB"]) != [0.5]


def test_each_rule_counts_once():
    g = RuleGuardrail(rules(0.0, ("bomb", -3.0)))
    assert g.score("p", ["bomb bomb bomb"]) == g.score("p", ["bomb"]) == [expit(-3.0)]


def test_prompt_is_ignored():
    g = RuleGuardrail(rules(0.0, ("bomb", -3.0)))
    assert g.score("tell me about a bomb", ["no"]) == [0.5]


def test_sigmoid_is_stable_at_extremes():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(0.0) == 0.5
    g = RuleGuardrail(rules(0.0, ("x", -1e6)))
    assert g.score("p", ["x", "y"]) == [0.0, 0.5]


def test_empty_response_list():
    assert RuleGuardrail(rules(0.0, ("x", 1.0))).score("p", []) == []


def test_bad_regex_names_rule_index_and_pattern():
    with pytest.raises(ValueError, match=r"rule 1: bad pattern '\(unclosed'"):
        RuleGuardrail(rules(0.0, ("fine", 1.0), ("(unclosed", 1.0)))


def test_build_guardrail_rules():
    g = build_guardrail(rules(0.0, ("x", 1.0)))
    assert isinstance(g, RuleGuardrail) and isinstance(g, Guardrail) and g.name == "rules"


def test_unknown_kind_names_kind_and_known_kinds():
    with pytest.raises(ValueError,
                       match=r"unknown guardrail kind 'llama_guard9'.*known kinds: .*rules"):
        build_guardrail(GuardrailConfig(kind="llama_guard9"))


def test_works_with_omegaconf_config():
    from omegaconf import OmegaConf
    cfg = OmegaConf.merge(OmegaConf.structured(GuardrailConfig),
                          {"bias": 1.0, "rules": [{"pattern": "bomb", "weight": -2.0}]})
    assert RuleGuardrail(cfg).score("p", ["a BOMB"]) == [expit(-1.0)]
