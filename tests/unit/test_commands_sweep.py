"""stardss sweep's plan (which mixtures it trains), its evaluation cut, and its figure."""
import pytest

from stardss.commands.sweep import _check, _eval_job, mixture, sweep_points
from stardss.config import ConfigError, load_job
from stardss.demo.config import DemoJobConfig
from stardss.eval.plots import sweep_figure
from tests.helpers import DEMO_JOB


def _job(*overrides):
    return load_job(DEMO_JOB, list(overrides), schema=DemoJobConfig)


def test_ratio_zero_is_trained_once_whatever_the_shapes():
    assert sweep_points([0.0, 0.1, 1.0], ["a", "b"]) == [
        ("none", 0.0), ("a", 0.1), ("a", 1.0), ("b", 0.1), ("b", 1.0)]
    assert sweep_points([0.3], ["a"]) == [("a", 0.3)]


def test_a_mixture_is_tasks_and_the_shape_at_the_ratio():
    assert [(s.path, s.ratio) for s in mixture("none", 0.0)] == [("tasks", 1.0)]
    assert [(s.path, s.ratio) for s in mixture("harmful", 0.3)] == [("tasks", 0.7),
                                                                   ("harmful", 0.3)]
    assert [(s.path, s.ratio) for s in mixture("harmful", 1.0)] == [("harmful", 1.0)]
    assert all(s.kind == "toy" for s in mixture("harmful", 0.3))


def test_the_evaluation_keeps_the_two_rates_the_figure_shows():
    ev = _eval_job(_job()).eval
    assert [s.name for s in ev.sets] == ["harmful", "tasks"]
    assert [j.name for j in ev.judges] == ["strict"] and not ev.attacks
    assert not ev.during_training.enabled
    with pytest.raises(ConfigError, match=r"eval.judges: stardss sweep judges safety with the "
                                          r"judge named 'strict'"):
        _eval_job(_job("eval.judges=[{name: other, kind: guardrail, guardrail: {kind: rules, "
                       "bias: 1.0}}]", "eval.during_training.judge=other"))


@pytest.mark.parametrize("key", ["ratios", "shapes", "methods"])
def test_an_empty_list_is_refused_naming_it(key):
    with pytest.raises(ConfigError, match=rf"demo.sweep.{key}: name at least one"):
        _check(_job(f"demo.sweep.{key}=[]"))


def test_bad_values_are_refused_by_the_schema():
    with pytest.raises(ConfigError, match=r"demo.sweep.ratios\[1\]: must be <= 1"):
        _job("demo.sweep.ratios=[0,1.5]")
    with pytest.raises(ConfigError, match=r"demo.sweep.shapes\[0\]: 'tasks' is not one of"):
        _job("demo.sweep.shapes=[tasks]")


def test_the_figure_draws_every_method_and_shape(tmp_path):
    def rate(v):
        return {"rate": v, "lo": max(0.0, v - 0.1), "hi": min(1.0, v + 0.1)}

    points = [{"shape": "none", "ratio": 0.0, "method": m, "safety": rate(1.0),
               "capability": rate(0.9)} for m in ("sft", "dss")]
    points += [{"shape": s, "ratio": r, "method": m, "safety": rate(1 - r / 2),
                "capability": rate(0.8)} for s in ("a", "b") for r in (0.5, 1.0)
               for m in ("sft", "dss")]
    path = sweep_figure(points, {"safety": rate(1.0), "capability": rate(0.9)}, ["a", "b"],
                        tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
