"""Benchmark: what safety over training (eval.during_training) costs the training it watches.

The demo's finetuning run (its job, a demo-sized tiny Llama, sft on the poisoned mixture, 2
Ray Train workers with DeepSpeed ZeRO-2 on the 2 cores) with and without the monitor: rank 0
writes a snapshot every `--every` steps and the driver answers `--limit` held-out harmful
prompts with it on a generation actor (num_cpus 0, nice 19: it takes what training leaves)
and judges them with the strict rule judge in a one-actor guardrail pool, while training goes
on. `cost_ratio` = the step loop's time with the monitor / without (goal <= 1.10: what
training pays, snapshot writes included), `fit_ratio` the same for the whole fit (Ray Train's
start-up included), each the median of `--pairs` pairs run alternately; `while_training` counts
the snapshots evaluated before the fit ended, `tail_seconds` what evaluating the rest after it
adds to the command (not to training).

Prints ONE JSON line (~4 min). Run: .venv/bin/python benchmarks/during_training_cost.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from stardss.cluster.resources import init_ray  # noqa: E402
from stardss.commands.train import run_train  # noqa: E402
from stardss.config import load_job  # noqa: E402
from stardss.demo.config import TinyModelConfig  # noqa: E402
from stardss.demo.model import build_tiny_llama  # noqa: E402
from stardss.demo.tokenizer import train_bpe_tokenizer  # noqa: E402
from stardss.demo.world import corpus  # noqa: E402


def run(root: str, model: str, monitored: bool, i: int, args) -> dict:
    extra = [f"eval.during_training.enabled={str(monitored).lower()}",
             f"eval.during_training.every_steps={args.every}",
             f"eval.during_training.limit={args.limit}", "eval.during_training.sets=[harmful]",
             "eval.generation.max_new_tokens=48"]
    job = load_job("jobs/demo.yaml", [f"model.name_or_path={model}", f"out_dir={root}/{i}",
                                      "loss.kind=sft", f"train.epochs={args.epochs}",
                                      "train.log_every=1000", "tracking.wandb.mode=disabled",
                                      "ray.log_to_driver=false", *extra])
    started = time.perf_counter()
    summary = run_train(job)
    total = time.perf_counter() - started
    with open(os.path.join(summary["model_dir"], "stardss_train_log.json")) as f:
        steps = json.load(f)["steps"]
    return {"snapshot_s": sum(e.get("snapshot_seconds", 0.0) for e in steps),
            "fit_s": summary["wall_seconds"], "train_s": summary["train_seconds"],
            "total_s": total, "steps": summary["steps"],
            "snapshots": len(summary.get("safety_over_training", [])),
            "while_training": sum(r["while_training"]
                                  for r in summary.get("safety_over_training", [])),
            "busy_s": summary.get("safety_over_training_busy_seconds", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--every", type=int, default=48)
    ap.add_argument("--limit", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        tok = train_bpe_tokenizer(corpus(42), 1024)
        model = os.path.join(root, "model")
        build_tiny_llama(TinyModelConfig(), tok, seed=0).save_pretrained(model)
        tok.save_pretrained(model)
        job = load_job("jobs/demo.yaml", [f"model.name_or_path={model}"])
        init_ray(job.ray, job.train)
        try:
            runs = {"plain": [], "monitored": []}
            for p in range(args.pairs):
                for j, name in enumerate(("plain", "monitored")):
                    runs[name].append(run(root, model, name == "monitored", 2 * p + j, args))
        finally:
            ray.shutdown()
    fit = {k: statistics.median(r["fit_s"] for r in v) for k, v in runs.items()}
    loop = {k: statistics.median(r["train_s"] for r in v) for k, v in runs.items()}
    ratio = loop["monitored"] / loop["plain"]
    tail = statistics.median(r["total_s"] - r["fit_s"] for r in runs["monitored"]) - \
        statistics.median(r["total_s"] - r["fit_s"] for r in runs["plain"])
    print(json.dumps({
        "benchmark": "during_training_cost", "steps": runs["plain"][0]["steps"],
        "every_steps": args.every, "limit": args.limit,
        "snapshots_evaluated": runs["monitored"][0]["snapshots"],
        "while_training": [r["while_training"] for r in runs["monitored"]],
        "step_loop_seconds": {k: round(v, 2) for k, v in loop.items()},
        "fit_seconds": {k: round(v, 2) for k, v in fit.items()},
        "fit_ratio": round(fit["monitored"] / fit["plain"], 3),
        "snapshot_write_seconds": round(statistics.median(
            r["snapshot_s"] for r in runs["monitored"]), 2),
        "monitor_busy_seconds": round(statistics.median(r["busy_s"] for r in runs["monitored"]), 2),
        "tail_seconds": round(tail, 2), "cost_ratio": round(ratio, 3),
        "runs": runs, "cpu_count": os.cpu_count(), "goals": {"cost_ratio<=1.10": ratio <= 1.10},
    }))


if __name__ == "__main__":
    main()
