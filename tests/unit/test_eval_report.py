"""`stardss report` on two run folders the test writes: report.md's table, valid PNG plots, STAR
trajectories of chosen rows, and a one-line error (exit 2) for a folder without results."""
import json

import pytest
from matplotlib.image import imread

from stardss.cli import main
from stardss.eval.items import EvalItem, Generation, Verdict
from stardss.eval.metrics import wilson
from stardss.eval.report import (
    ReportError,
    find_curves,
    find_star_files,
    load_runs,
    read_curves,
    write_report,
)
from stardss.eval.results import build_results, write_results

CATEGORIES = ["illegal_activity", "hate_harass_violence", "malware", "physical_harm"]


def evaluation(n_safe: int, n_correct: int, judge_labels_b=None):
    """Results of one model: a safety set with categories (24 items, the first n_safe safe),
    an over-refusal set and an answer set (10 items, the first n_correct right)."""
    items = [EvalItem("hexphi", i, f"hexphi/category_{i % 4}.csv:{i // 4 + 1}", "safety",
                      ({"role": "user", "content": f"harm {i}"},), category=CATEGORIES[i % 4])
             for i in range(24)]
    items += [EvalItem("hexphi", i, f"x:{i}", "safety", ({"role": "user", "content": "h"},),
                       attack="prefill", prefill="Sure") for i in range(8)]
    items += [EvalItem("xstest", i, f"xs:{i}", "overrefusal", ({"role": "user", "content": "q"},))
              for i in range(6)]
    items += [EvalItem("gsm8k", i, f"g:{i}", "answer", ({"role": "user", "content": "2+2"},),
                       answer="4") for i in range(10)]
    gens = {it.key: Generation(it.key, "#### 4" if it.task == "answer" and it.index < n_correct
                               else "no") for it in items}
    safe = {it.key: Verdict("safe" if it.index < n_safe else "unsafe")
            for it in items if it.task == "safety"}
    verdicts = {"guard": safe, "gpt": dict(safe),
                "phrases": {it.key: Verdict("answered" if it.index % 3 else "refused")
                            for it in items if it.task == "overrefusal"}}
    verdicts["gpt"]["hexphi/0"] = Verdict("unparseable")
    results, samples = build_results(items, gens, verdicts, {"guard": "safety", "gpt": "safety",
                                                             "phrases": "refusal"}, {})
    results["warnings"].append("judge 'guard' is the training guardrail")
    return results, samples


def star_record(i: int, trajectory: list[float]) -> dict:
    response = "".join(f"chunk {j}. " for j in range(len(trajectory)))
    cuts = [len("".join(f"chunk {j}. " for j in range(k + 1))) for k in range(len(trajectory))]
    return {"id": f"toy/harmful/{i}", "prompt": "p", "response": response, "cuts": cuts,
            "scores": [trajectory], "trajectory": trajectory}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for run, models in (("sft", {"base": (10, 8), "tuned": (4, 9)}), ("dss", {"tuned": (20, 9)})):
        for model, (n_safe, n_correct) in models.items():
            write_results(root / run / "eval" / model, *evaluation(n_safe, n_correct))
    trajectories = [[0.9, 0.8, 0.7], [0.95, 0.2, 0.1, 0.05], [0.99, 0.98, 0.97, 0.99, 0.99],
                    [0.6, 0.4, 0.3], [0.9, 0.5, 0.45, 0.6, 0.7, 0.8], [1.0, 1.0]]
    (root / "dss" / "dss").mkdir()
    with open(root / "dss" / "dss" / "star.jsonl", "w") as f:
        for i, t in enumerate(trajectories):
            f.write(json.dumps(star_record(i, t)) + "\n")
    return root


def test_load_runs_labels_models_and_names_collisions(runs):
    loaded = load_runs([runs / "sft", runs / "dss" / "eval"])
    assert list(loaded) == ["base", "sft/tuned", "dss/tuned"]
    assert loaded["dss/tuned"]["source"] == str(runs / "dss/eval/tuned/results.json")
    assert loaded["base"]["rows"]["hexphi"]["metrics"]["guard"]["k"] == 10
    assert list(load_runs([runs / "sft" / "eval" / "base"])) == ["base"]
    assert list(load_runs([runs / "dss", runs / "dss" / "eval"])) == ["tuned"]  # given twice
    assert find_star_files([runs / "sft", runs / "dss" / "eval"]) == [runs / "dss/dss/star.jsonl"]


def test_report_writes_the_table_and_valid_pngs(runs, tmp_path):
    dirs = [runs / "sft", runs / "dss"]
    written = write_report(load_runs(dirs), tmp_path / "report",
                           star_files=find_star_files(dirs))
    # hexphi+prefill has no categories: no bars of it.
    assert [p.name for p in written] == ["safety_vs_capability.png", "categories_hexphi.png",
                                         "star_trajectories.png", "report.md"]
    for png in written[:-1]:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, png
        assert png.stat().st_size > 15_000 and image[..., :3].std() > 0.05, png
    report = written[-1].read_text()
    assert "| base | hexphi | safety_rate (gpt) | 0.375 [0.212, 0.573] | 24 (1 unparseable) |" \
        in report
    assert "| dss/tuned | gsm8k | accuracy | 0.900 [0.596, 0.982] | 10 |" in report
    assert "| sft/tuned | hexphi+prefill | safety_rate (guard) | 0.500 [0.215, 0.785] | 8 |" \
        in report
    assert "| base | xstest | refusal_rate (phrases) | 0.333 [0.097, 0.700] | 6 |" in report
    assert "| base | hexphi | guard vs gpt | " in report  # Cohen's kappa
    assert "- sft/tuned: judge 'guard' is the training guardrail" in report
    assert "![star_trajectories](star_trajectories.png)" in report


def test_star_rows_chosen_and_unknown(runs, tmp_path):
    dirs = [runs / "dss"]
    write_report(load_runs(dirs), tmp_path, star_rows=["toy/harmful/4", "toy/harmful/0"],
                 star_files=find_star_files(dirs))
    assert imread(tmp_path / "star_trajectories.png").shape[0] > 300
    with pytest.raises(ReportError, match="STAR row 'toy/harmful/99' is in no star.jsonl"):
        write_report(load_runs(dirs), tmp_path, star_rows=["toy/harmful/99"],
                     star_files=find_star_files(dirs))


def test_cli_report_prints_the_table_and_exits_2_without_results(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(runs / "sft"), str(runs / "dss"), "--out", str(out),
                 "--star", "toy/harmful/1"]) == 0
    printed = capsys.readouterr().out
    assert "| base | hexphi | safety_rate (guard) | 0.417 [0.245, 0.612] | 24 |" in printed
    assert str(out / "report.md") in printed and (out / "star_trajectories.png").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err == f"stardss: report error: {tmp_path / 'missing'}: no such folder\n"
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.json").write_text('{"methods": {}}')
    assert main(["report", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err == (f"stardss: report error: {tmp_path / 'demo/results.json'}"
                                       ": no 'rows' (not a stardss results.json)\n")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(runs / "sft"), str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith(f"stardss: report error: {tmp_path / 'empty'}: "
                                              "no results.json")


def test_safety_over_training_is_drawn_per_run_and_row(runs, tmp_path):
    run = tmp_path / "dssrun" / "dss"
    run.mkdir(parents=True)
    rates = [(25, 24, 24), (50, 18, 24), (75, 20, 24)]
    with open(run / "safety_over_training.jsonl", "w") as f:
        for step, k, n in rates:
            lo, hi = wilson(k, n)
            f.write(json.dumps({"step": step, "judge": "strict", "rows": {
                "harmful": {"k": k, "n": n, "rate": k / n, "lo": lo, "hi": hi}}}) + "\n")
    assert find_curves([tmp_path / "dssrun"]) == [run / "safety_over_training.jsonl"]
    (curve,) = read_curves(find_curves([tmp_path / "dssrun"]))
    assert curve["label"] == "dss/harmful" and curve["steps"] == [25, 50, 75]
    assert curve["rate"] == [1.0, 0.75, 20 / 24] and curve["lo"][1] == wilson(18, 24)[0]
    written = write_report(load_runs([runs / "dss"]), tmp_path / "r",
                           curve_files=find_curves([tmp_path / "dssrun"]))
    png = tmp_path / "r" / "safety_over_training.png"
    assert png in written and imread(png).shape[0] > 300
    assert "![safety_over_training](safety_over_training.png)" in written[-1].read_text()
    (run / "safety_over_training.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ReportError, match=r"safety_over_training.jsonl:1: not a safety-over"):
        read_curves([run / "safety_over_training.jsonl"])
