"""The console script end to end: a shortened demo, then train/score/eval on its output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STARDSS = str(Path(sys.executable).with_name("stardss"))
# sft is left out of the shortened demo: `stardss train ... loss.kind=sft` runs it below
SHORT = ["demo.align_epochs=2", "train.epochs=1", "eval.generation.max_new_tokens=24",
         "demo.methods=[rs,dss]"]


def _run(*args, cwd=None):
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([STARDSS, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _last_json(stdout: str) -> dict:
    """The summary the command prints last (Ray worker logs may come before it on stdout)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = _run("demo", "jobs/demo.yaml", *SHORT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_writes_results_and_prints_the_table(demo_out):
    out, proc = demo_out
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"base", "rs", "dss"}
    for m in results["methods"].values():
        assert set(m) == {"safety", "prefilled", "over-refusal", "capability", "train_seconds"}
        for col in ("safety", "prefilled", "over-refusal", "capability"):
            assert 0.0 <= m[col]["lo"] <= m[col]["rate"] <= m[col]["hi"] <= 1.0
        # the held-out sets are large enough for intervals narrower than +-0.1
        assert m["safety"]["n"] == 120 and m["capability"]["n"] == 150
        assert m["train_seconds"] > 0
    assert results["config"]["train"]["epochs"] == 1  # the overrides reached the run
    samples = [json.loads(x) for x in (out / "eval" / "dss" / "samples.jsonl").open()]
    harmful = [s for s in samples if s["row"] == "harmful"]
    n_safe = sum(s["verdicts"]["strict"]["label"] == "safe" for s in harmful)
    assert results["methods"]["dss"]["safety"]["k"] == n_safe and len(harmful) == 120
    assert all(s["response"].startswith("Sure, here is ") for s in samples
               if s["row"] == "harmful+prefill")
    report = {p.name for p in (out / "report").iterdir()}
    assert {"report.md", "safety_vs_capability.png", "categories_harmful.png",
            "star_trajectories.png"} <= report
    examples = json.loads((out / "star_examples.json").read_text())
    assert {e["shape"] for e in examples} >= {"attack_refusal_prefix", "attack_harmless_suffix"}
    assert "over-refusal" in proc.stdout and "dss" in proc.stdout
    assert "guardrail pool (2 actors)" in proc.stderr  # progress is shown
    assert "judge 'training-guard' is the training guardrail" in proc.stderr
    # The learned guardrail (<out>/guard) is what rs and dss trained against and what the
    # training-guard judge is; it calls every plain harmful row unsafe, so rs drops them.
    (guard,) = results["config"]["guardrails"]
    assert guard["kind"] == "llama_guard" and guard["name_or_path"] == str(out / "guard")
    judges = {j["name"]: j for j in results["config"]["eval"]["judges"]}
    assert judges["training-guard"]["guardrail"] == guard
    assert judges["strict"]["guardrail"]["kind"] == "rules"
    assert json.loads((out / "guard" / "training.json").read_text())["rows"] == 558
    dropped = json.loads((out / "rs" / "rs_dropped.json").read_text())
    assert {f"toy/harmful/{i}" for i in range(36)} <= set(dropped)
    assert results["runs"]["rs"]["star"]["rs_dropped"] == len(dropped)


def test_train_score_eval_commands_reuse_the_demo_output(demo_out, tmp_path):
    out, _ = demo_out
    proc = _run("train", "jobs/demo.yaml", f"out_dir={out}", "loss.kind=sft",
                "train.max_steps=3", "train.lr=1e-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _last_json(proc.stdout)
    assert summary["loss"] == "sft" and summary["steps"] == 3
    # The demo trained against its learned guardrail (demo.guard=learned), not the YAML's rules.
    learned = f"guardrails=[{{kind: llama_guard, name_or_path: {out / 'guard'}}}]"
    proc = _run("score", "jobs/demo.yaml", f"out_dir={out}", learned,
                "--html", str(tmp_path / "s.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "s.html").read_text()
    assert page.count('class="c"') > 522 and "toy/attack_harmless_suffix/" in page
    # The dss run of the demo scored the same rows with the same guardrail: all cache hits.
    assert "522 guardrail-row hits, 0 misses" in proc.stderr
    star = [json.loads(x) for x in (out / "score" / "star.jsonl").read_text().splitlines()]
    assert len(star) == _last_json(proc.stdout)["scored"] > 0
    assert all(r["cuts"][-1] == len(r["response"]) for r in star)
    proc = _run("eval", "jobs/demo.yaml", f"out_dir={out}", "--model",
                f"dss={out / 'dss' / 'model'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_last_json(proc.stdout)["dss"]) >= {"harmful/strict", "tasks/accuracy"}
    assert (out / "eval" / "dss" / "results.json").exists()


def test_bad_eval_input_exits_2_naming_the_file(tmp_path):
    bad = tmp_path / "adv.csv"
    bad.write_text("goal,target\nDo a harmful thing,Sure\nan extra,field,here\n")
    proc = _run("eval", "jobs/demo.yaml", f"out_dir={tmp_path}", "model.name_or_path=unused",
                f"eval.sets=[{{name: adv, path: {bad}}}]", "eval.attacks=[]",
                "eval.during_training.sets=[]")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("stardss: eval error:")]
    assert f"{bad}:3" in line and "Traceback" not in proc.stderr


def test_config_errors_exit_2_naming_the_key():
    proc = _run("train", "jobs/demo.yaml", "train.lrr=1")
    assert proc.returncode == 2 and "train.lrr" in proc.stderr


def test_score_with_a_model_guardrail(demo_out, tmp_path):
    """`stardss score` with a Llama Guard 3 stand-in (real template, tiny random weights)
    loaded by the guardrail actors through the Hugging Face path."""
    from stardss.testing.guards import build_tiny_guard

    out, _ = demo_out
    guard = build_tiny_guard("llama_guard", tmp_path / "lg")
    proc = _run("score", "jobs/demo.yaml", f"out_dir={tmp_path / 'run'}",
                f"model.name_or_path={out / 'aligned' / 'model'}",
                f"guardrails=[{{kind: llama_guard, name_or_path: {guard}, batch_size: 8}}]",
                "star.chunk.size=10", "--html", str(tmp_path / "lg.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _last_json(proc.stdout)
    star = [json.loads(x) for x in (tmp_path / "run" / "score" / "star.jsonl").read_text()
            .splitlines()]
    assert len(star) == summary["scored"] == 522
    scores = [p for r in star for p in r["trajectory"]]
    assert all(0.0 < p < 1.0 for p in scores) and len(set(scores)) > 100
    assert summary["cache"]["misses"] == 522 and (tmp_path / "lg.html").exists()
