"""Mixtures: exact per-source counts, seeded and stable choices, and full accounting."""
from collections import Counter
from fractions import Fraction

import pytest

from stardss.config.schema import DataConfig, SourceConfig
from stardss.data.load import load_mixture
from stardss.data.mixture import allocate, largest_size, mix
from stardss.data.quarantine import BadRowSink
from stardss.data.rows import ChatRow


def make(name: str, n: int) -> list[ChatRow]:
    return [ChatRow(id=f"{name}:{i}", source=name, messages=({"role": "user", "content": "q"},),
                    response=f"a{i}", index=i) for i in range(n)]


def sources(**sizes) -> dict[str, list[ChatRow]]:
    return {name: make(name, n) for name, n in sizes.items()}


def per_source(mixture) -> Counter:
    return Counter(r.source for r in mixture)


def test_allocate_is_exact_by_largest_remainder():
    w = {"a": Fraction(1), "b": Fraction(1), "c": Fraction(1)}
    assert allocate(w, 10) == {"a": 4, "b": 3, "c": 3}
    assert allocate({"a": Fraction(0.3), "b": Fraction(0.7)}, 11) == {"a": 3, "b": 8}
    assert allocate({"a": Fraction(1), "b": Fraction(0)}, 5) == {"a": 5, "b": 0}


def test_largest_size_without_repeats():
    assert largest_size({"a": Fraction(1), "b": Fraction(1)}, {"a": 10, "b": 100}) == 20
    # 11 -> (3, 8) fits; 12 and 13 would need a 4th row of a.
    assert largest_size({"a": Fraction(0.3), "b": Fraction(0.7)}, {"a": 3, "b": 100}) == 11
    assert largest_size({"a": Fraction(1)} | {"b": Fraction(1), "c": Fraction(1)},
                        {"a": 3, "b": 3, "c": 4}) == 9


def test_ratios_with_mix_size_give_exact_counts_and_summary():
    rows = sources(a=100, b=100, c=100)
    mixture, summary = mix(rows, {"a": 5, "b": 3, "c": 2}, 50, seed=1)
    assert per_source(mixture) == {"a": 25, "b": 15, "c": 10}
    assert summary == {"a": {"available": 100, "used": 25, "repeated": 0, "unused": 75},
                       "b": {"available": 100, "used": 15, "repeated": 0, "unused": 85},
                       "c": {"available": 100, "used": 10, "repeated": 0, "unused": 90},
                       "total": 50}
    assert len({r.id for r in mixture}) == 50  # without replacement


def test_ratios_without_mix_size_take_the_largest_size_that_needs_no_repeats():
    rows = sources(small=10, big=100)
    mixture, summary = mix(rows, {"small": 0.25, "big": 0.75}, None, seed=0)
    # 41 -> quotas 10.25 / 30.75 -> (10, 31) still fits; 42 would need an 11th small row.
    assert per_source(mixture) == {"small": 10, "big": 31}
    assert summary["small"] == {"available": 10, "used": 10, "repeated": 0, "unused": 0}
    assert summary["big"] == {"available": 100, "used": 31, "repeated": 0, "unused": 69}
    assert summary["total"] == 41


def test_short_source_repeats_rows_and_reports_it():
    rows = sources(a=3, b=50)
    mixture, summary = mix(rows, {"a": 0.5, "b": 0.5}, 16, seed=7)
    assert summary["a"] == {"available": 3, "used": 3, "repeated": 5, "unused": 0}
    assert summary["b"] == {"available": 50, "used": 8, "repeated": 0, "unused": 42}
    copies = Counter(r.id for r in mixture if r.source == "a")
    assert sorted(copies.values()) == [2, 3, 3]  # 8 = 2 full passes + a sample of 2
    assert set(copies) == {"a:0", "a:1", "a:2"}


def test_accounting_used_plus_unused_is_available():
    rows = sources(a=37, b=11, c=64)
    for ratios, size in [(None, None), ({"a": 1, "b": 1, "c": 1}, None),
                         ({"a": 1, "b": 1, "c": 1}, 100), (None, 30)]:
        mixture, summary = mix(rows, ratios, size, seed=3)
        for name, src_rows in rows.items():
            s = summary[name]
            assert s["used"] + s["unused"] == s["available"] == len(src_rows)
            assert s["used"] + s["repeated"] == per_source(mixture)[name]
        assert summary["total"] == len(mixture) == sum(per_source(mixture).values())


def test_no_ratios_concatenates_everything():
    rows = sources(a=3, b=2)
    mixture, summary = mix(rows, None, None, seed=0, shuffle=False)
    assert [r.id for r in mixture] == ["a:0", "a:1", "a:2", "b:0", "b:1"]
    assert summary == {"a": {"available": 3, "used": 3, "repeated": 0, "unused": 0},
                       "b": {"available": 2, "used": 2, "repeated": 0, "unused": 0},
                       "total": 5}
    shuffled, _ = mix(rows, None, None, seed=0)
    assert sorted(r.id for r in shuffled) == [r.id for r in mixture]
    assert [r.id for r in shuffled] == [r.id for r in mix(rows, None, None, seed=0)[0]]


def test_no_ratios_with_mix_size_samples_proportionally():
    mixture, summary = mix(sources(a=60, b=20), None, 8, seed=0)
    assert per_source(mixture) == {"a": 6, "b": 2}
    assert summary["total"] == 8


def test_deterministic_per_seed_and_stable_per_source():
    rows = sources(a=200, b=200)
    first = [r.id for r in mix(rows, {"a": 1, "b": 1}, 40, seed=5)[0]]
    assert first == [r.id for r in mix(rows, {"a": 1, "b": 1}, 40, seed=5)[0]]
    assert first != [r.id for r in mix(rows, {"a": 1, "b": 1}, 40, seed=6)[0]]
    # Adding a source does not change which rows of "a" are picked for the same count.
    picked_a = [r.id for r in mix(rows, {"a": 1, "b": 1}, 40, seed=5, shuffle=False)[0]
                if r.source == "a"]
    more = rows | sources(c=100)
    picked_a2 = [r.id for r in mix(more, {"a": 1, "b": 1, "c": 2}, 80, seed=5,
                                   shuffle=False)[0] if r.source == "a"]
    assert picked_a == picked_a2 and len(picked_a) == 20
    assert picked_a == sorted(picked_a, key=lambda i: int(i.split(":")[1]))  # file order


def test_mix_refuses_inconsistent_input():
    with pytest.raises(ValueError, match="ratios are for sources"):
        mix(sources(a=3), {"b": 1.0}, None, seed=0)
    with pytest.raises(ValueError, match="'empty' has ratio 0.5 but no rows"):
        mix(sources(a=3, empty=0), {"a": 0.5, "empty": 0.5}, None, seed=0)
    with pytest.raises(ValueError, match="named 'total'"):
        mix(sources(total=3), None, None, seed=0)


def test_load_mixture_merges_read_and_mix_summaries(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(f'{{"prompt": "pa{i}", "response": "ra{i}"}}\n' for i in range(10))
                 + '{"prompt": "bad"}\n')
    b = tmp_path / "b.jsonl"
    b.write_text("".join(f'{{"prompt": "pb{i}", "response": "rb{i}"}}\n' for i in range(30)))
    cfg = DataConfig(sources=[SourceConfig(path=str(a), name="A", ratio=0.5),
                              SourceConfig(path=str(b), name="B", ratio=0.5)],
                     on_bad_row="quarantine")
    with BadRowSink("quarantine", tmp_path / "q.jsonl") as sink:
        mixture, summary = load_mixture(cfg, sink, seed=0)
    assert summary == {
        "A": {"read": 10, "bad": 1, "available": 10, "used": 10, "repeated": 0, "unused": 0},
        "B": {"read": 30, "bad": 0, "available": 30, "used": 10, "repeated": 0, "unused": 20},
        "total": 20}
    assert per_source(mixture) == {"A": 10, "B": 10}
    cfg.sources[1].ratio = None
    with pytest.raises(ValueError, match="every source a ratio or none"):
        load_mixture(cfg, BadRowSink("error"), seed=0)
    with pytest.raises(ValueError, match="no data sources"):
        load_mixture(DataConfig(), BadRowSink("error"), seed=0)
