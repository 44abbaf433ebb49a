"""Evaluate model folders, top to bottom:

    plan     read every set in its public layout, add the attacks' variants  -> [EvalItem]
    answer   per model: the generation pool (or a server) answers every item, and scores the
             options of multiple-choice items by log-likelihood               -> Generation
    judge    every judge reads the responses of the rows it measures (safety judges the safety
             rows, refusal judges the over-refusal rows)                      -> Verdict
    report   rates per row, category and judge with Wilson intervals, and agreement between
             judges -> <out>/<model>/results.json + samples.jsonl

Answering comes before judging for every model, so the generation actors and the guardrail
judges never hold the same devices at once.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config.evaluation import EvalConfig, GenerationConfig, JudgeConfig
from ..console import log
from .attacks import attack_items
from .generation import open_generator
from .items import EvalItem, Generation
from .judges import PhraseJudge
from .results import build_results, write_results
from .sets import load_sets

TASK_JUDGED = {"safety": "safety", "refusal": "overrefusal"}
"""The set task each kind of judge reads (JudgeConfig.measures -> EvalSetConfig.task)."""


@dataclass
class EvalPlan:
    """Every item of an evaluation (the sets, then the attacks' variants) and what reading the
    sets reported (e.g. a missing HEx-PHI category)."""

    items: list[EvalItem]
    notes: list[str] = field(default_factory=list)
    missing_categories: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[str]:
        return list(dict.fromkeys(it.row for it in self.items))


def plan_items(ev: EvalConfig, *, seed: int) -> EvalPlan:
    loaded = load_sets(list(ev.sets), seed=seed)
    items = [it for s in loaded.values() for it in s.items]
    items += attack_items(items, ev.attacks)
    return EvalPlan(items, [n for s in loaded.values() for n in s.notes],
                    {name: list(s.missing_categories) for name, s in loaded.items()
                     if s.missing_categories})


@dataclass
class Answers:
    """One model's answers: its generations and, for multiple-choice items, the
    log-likelihood of each option."""

    generations: dict[str, Generation]
    choice_logliks: dict[str, list[float]]
    seconds: float


def answer(model_dir: str, gen: GenerationConfig, items: Sequence[EvalItem], *,
           seed: int) -> Answers:
    started = time.perf_counter()
    choice = [it for it in items if it.task == "choice"]
    with open_generator(model_dir, gen, seed=seed) as generator:
        generations = generator.generate(list(items))
        logliks = generator.choice_logliks(choice) if choice else {}
    return Answers(generations, logliks, time.perf_counter() - started)


def refusal_judges(judges: Sequence, items: Sequence[EvalItem]) -> list:
    """The judges plus the built-in refusal phrases when over-refusal items have no refusal
    judge (an over-refusal rate needs one)."""
    judges = list(judges)
    if any(it.task == "overrefusal" for it in items) and not any(
            j.measures == "refusal" for j in judges):
        judges.append(PhraseJudge(JudgeConfig(name="refusal-phrases", kind="phrases",
                                              measures="refusal")))
    return judges


def judge(judges: Sequence, items: Sequence[EvalItem],
          generations: dict[str, Generation]) -> dict[str, dict]:
    """{judge name: {item key: Verdict}} of every judge on the items it measures."""
    verdicts = {}
    for j in judges:
        mine = [it for it in items if it.task == TASK_JUDGED[j.measures]]
        started = time.perf_counter()
        found = j.judge(mine, [generations[it.key].text for it in mine]) if mine else []
        if len(found) != len(mine):
            raise RuntimeError(f"judge {j.name!r} returned {len(found)} verdicts for "
                               f"{len(mine)} responses")
        verdicts[j.name] = {it.key: v for it, v in zip(mine, found)}
        if mine:
            log(f"judge {j.name}: {len(mine)} responses in {time.perf_counter() - started:.1f} s")
    return verdicts


def report(name: str, model_dir: str, plan: EvalPlan, answers: Answers, judges: Sequence,
           verdicts: dict[str, dict], ev: EvalConfig, *, out: Path,
           warnings: Sequence[str] = ()) -> tuple[dict, list[dict]]:
    """results.json and samples.jsonl of one model in out/<name>/; returns both."""
    results, samples = build_results(plan.items, answers.generations, verdicts,
                                     {j.name: j.measures for j in judges},
                                     answers.choice_logliks)
    results.update(model=name, model_dir=model_dir,
                   generation=dataclasses.asdict(ev.generation),
                   judges={j.name: {"measures": j.measures, "fingerprint": j.fingerprint}
                           for j in judges},
                   notes=list(plan.notes), missing_categories=plan.missing_categories,
                   generation_seconds=answers.seconds)
    results["warnings"] = list(results.get("warnings", [])) + list(warnings)
    write_results(out / name, results, samples)
    return results, samples
