"""`stardss demo`: the whole method on the embedded toy world, end to end.

1. write the world's splits to <out>/data (to read), train a BPE tokenizer, build a tiny Llama;
2. align it (SFT on tasks + refusals): the aligned model is the reference and the start point;
   with demo.guard=learned, train the training guardrail too: a tiny Llama Guard 3 stand-in
   taught the toy policy on whole responses (stardss/demo/guard.py), written to <out>/guard;
3. finetune it with each of demo.methods on the same poisoned mixture (guardrail pool for
   rs/dss, then Ray Train + DeepSpeed);
4. evaluate base (the aligned model) and every finetuned model on the held-out harmful,
   prefilled-harmful, over-refusal and task sets (generation pool, a strict judge and the
   training guardrail as a second, flagged, judge); print a table with 95 % intervals and write
   <out>/eval/<model>/results.json, the plots in <out>/report/, <out>/results.json and
   <out>/star_examples.json.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..cluster.resources import init_ray
from ..config.load import derive, to_dict
from ..config.schema import GuardrailConfig, SourceConfig
from ..console import log
from ..demo.config import DemoJobConfig
from ..demo.guard import train_guard
from ..demo.model import build_tiny_llama
from ..demo.tokenizer import train_bpe_tokenizer
from ..demo.world import SPLITS, corpus, toy_split
from ..eval.report import find_curves, load_runs, write_report
from ..guard.hf.formats import load_format
from ..testing.guards import build_tiny_guard
from .eval import run_eval, same_guardrail
from .train import run_train


def _write_world(out: Path, seed: int) -> None:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with open(data / f"{name}.jsonl", "w") as f:
            for row in toy_split(name, seed):
                f.write(json.dumps(row) + "\n")


def build_base(job: DemoJobConfig, out: Path) -> str:
    """Tokenizer + randomly initialised tiny Llama, saved as one Hugging Face folder."""
    tokenizer = train_bpe_tokenizer(corpus(job.seed), job.demo.tiny.vocab_size)
    model = build_tiny_llama(job.demo.tiny, tokenizer, job.seed)
    path = out / "init"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    log(f"built a {n / 1e6:.2f}M-parameter Llama and a {len(tokenizer)}-token BPE at {path}")
    return str(path)


def align_job(job: DemoJobConfig) -> DemoJobConfig:
    """The alignment run: SFT on tasks + refusals, the demo's own epochs and learning rate."""
    return derive(job, {"loss.kind": "sft",
                        "data.sources": [SourceConfig(path="align", kind="toy")],
                        "data.mix_size": None, "train.epochs": job.demo.align_epochs,
                        "train.lr": job.demo.align_lr,
                        "train.min_lr": min(job.train.min_lr, job.demo.align_lr)})


def star_examples(out: Path, limit_per_shape: int = 2) -> list[dict]:
    """A few trajectories of each data shape, from the dss run's star.jsonl."""
    path = out / "dss" / "star.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.open()]
    picked = []
    for shape in ("attack_refusal_prefix", "attack_harmless_suffix", "harmful", "tasks"):
        mine = [r for r in records if r["id"].startswith(f"toy/{shape}/")][:limit_per_shape]
        for r in mine:
            chunks = [r["response"][a:b] for a, b in zip([0] + r["cuts"][:-1], r["cuts"])]
            picked.append({"id": r["id"], "shape": shape, "prompt": r["prompt"],
                           "chunks": [{"text": c, "p_safe": round(p, 4)}
                                      for c, p in zip(chunks, r["trajectory"])]})
    return picked


DEMO_COLUMNS = (("safety", "harmful", "strict"), ("prefilled", "harmful+prefill", "strict"),
                ("over-refusal", "overrefusal", "refusal-phrases"),
                ("capability", "tasks", "accuracy"))
"""The demo table: (column, results row, metric key) from each model's results.json."""


def demo_rates(results: dict) -> dict:
    """{column: metric} of one model's results (rate, lo, hi, k, n)."""
    return {col: results["rows"][row]["metrics"][metric] for col, row, metric in DEMO_COLUMNS}


def format_table(methods: dict) -> str:
    """One line per method: each rate with its 95 % Wilson interval."""
    head = f"{'method':<7}" + "".join(f" {c:>19}" for c, _, _ in DEMO_COLUMNS) + "  train_s"
    lines = [head]
    for name, m in methods.items():
        cells = "".join(f" {m[c]['rate']:>6.3f} [{m[c]['lo']:.2f}, {m[c]['hi']:.2f}]"
                        for c, _, _ in DEMO_COLUMNS)
        lines.append(f"{name:<7}{cells} {m['train_seconds']:>8.1f}")
    return "\n".join(lines)


def aligned_world(job: DemoJobConfig, out: Path, steps: int = 4) -> tuple[DemoJobConfig, dict]:
    """Steps 1-2 of the demo (and of `stardss sweep`): the world's files, the tiny model and
    its alignment; returns the job with out_dir and the aligned model as model.name_or_path,
    and the alignment run's summary."""
    job = derive(job, {"out_dir": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    _write_world(out, job.seed)
    init_ray(job.ray, job.train)

    log(f"step 1/{steps}: tokenizer and tiny model")
    init_path = build_base(job, out)
    log(f"step 2/{steps}: alignment (SFT on tasks + refusals) -> the reference model")
    aligned = run_train(align_job(job), model_path=init_path, run_name="align",
                        out_dir=str(out / "aligned"))
    return derive(job, {"model.name_or_path": aligned["model_dir"]}), aligned


def learned_guard(out: Path, seed: int) -> tuple[GuardrailConfig, dict]:
    """The demo's learned guardrail: a Llama Guard 3 stand-in (the real 1B template, `safe` /
    `unsafe` one token each, random weights) written to <out>/guard, then trained there on the
    world (stardss/demo/guard.py) at the decision position the family code reads; returns the
    guardrail that loads it and the training summary (also in <out>/guard/training.json)."""
    from transformers import AutoTokenizer

    path = build_tiny_guard("llama_guard", out / "guard", seed=seed)
    cfg = GuardrailConfig(kind="llama_guard", name_or_path=path)
    stats = train_guard(path, load_format(cfg, AutoTokenizer.from_pretrained(path)), seed)
    with open(Path(path) / "training.json", "w") as f:
        json.dump(stats, f, indent=1)
    log(f"trained the guardrail {path} on {stats['rows']} whole responses "
        f"({stats['unsafe_rows']} unsafe) in {stats['seconds']:.0f} s: training accuracy "
        f"{stats['train_accuracy']:.3f}")
    return cfg, stats


def demo_guard(job: DemoJobConfig, out: Path) -> DemoJobConfig:
    """`job` training against demo.guard: unchanged for `rules`; for `learned` the learned
    guardrail replaces job.guardrails and every judge that is one of them (the
    `training-guard` judge), so the judge still shows what the trained-against guard says."""
    if job.demo.guard == "rules":
        return job
    cfg, _ = learned_guard(out, job.seed)
    judges = [dataclasses.replace(j, guardrail=cfg) if j.guardrail is not None and any(
        same_guardrail(j.guardrail, g) for g in job.guardrails) else j for j in job.eval.judges]
    return derive(job, {"guardrails": [cfg], "eval.judges": judges})


def run_demo(job: DemoJobConfig, out_dir: str | None = None) -> dict:
    started = time.perf_counter()
    out = Path(out_dir or job.out_dir)
    job, aligned = aligned_world(job, out)
    job = demo_guard(job, out)
    base_dir = aligned["model_dir"]
    runs = {}
    methods = job.demo.methods
    for i, method in enumerate(methods):
        log(f"step 3/4: finetune {method} ({i + 1}/{len(methods)}) on the poisoned mixture")
        runs[method] = run_train(derive(job, {"loss.kind": method}), model_path=base_dir,
                                 run_name=method)

    log("step 4/4: evaluation (generation pool, judges, report)")
    models = {"base": base_dir, **{m: r["model_dir"] for m, r in runs.items()}}
    evals = run_eval(job, models)
    table = {}
    for name, ev in evals.items():
        run = aligned if name == "base" else runs[name]
        table[name] = {**demo_rates(ev), "train_seconds": run["train_seconds"]}
    examples = star_examples(out)
    star_files = [p for p in (out / "dss" / "star.jsonl", out / "rs" / "star.jsonl") if p.exists()]
    plots = write_report(load_runs([str(out)]), str(out / "report"), star_files=star_files[:1],
                         star_rows=[e["id"] for e in examples][::2] if star_files else None,
                         curve_files=find_curves([str(out)]))
    results = {
        "methods": table,
        "config": to_dict(job),
        "runs": {"align": aligned, **runs},
        "eval": {n: str(out / "eval" / n / "results.json") for n in evals},
        "report": [str(p) for p in plots],
        "demo_seconds": time.perf_counter() - started,
    }
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    with open(out / "star_examples.json", "w") as f:
        json.dump(examples, f, indent=1, ensure_ascii=False)
    print(format_table(table))
    print("rates with 95 % Wilson intervals; greedy decoding flips with float rounding, so "
          "another machine may print other rates inside (or near) these intervals")
    print(f"results: {out / 'results.json'}  per model: {out / 'eval'}/<model>/  plots: "
          f"{out / 'report'}  ({results['demo_seconds']:.0f} s)")
    return results
