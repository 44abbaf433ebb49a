"""The stages wired in data order, as the `score`, `train` and `eval` commands run them.

    data (load, validate, mix, tokenise) -> guard pool (P(safe) per prefix) -> STAR weights
    -> Ray Train + DeepSpeed -> Hugging Face checkpoint -> eval
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .cluster.placement import check_placement, on_cluster
from .console import log
from .data.format import EncodedRow, encode_row
from .data.load import load_mixture, load_rows
from .data.quarantine import BadRowSink
from .data.rows import BadRow, ChatRow
from .data.tokenizer import load_tokenizer
from .scoring import star_train_rows, stream_train, streams

# Ray Train polls workers every 2 s by default, which makes every report cost that much.
DRIVER_ENV = {"DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def init_ray(job) -> None:
    import ray

    env = {k: os.environ.get(k, v) for k, v in DRIVER_ENV.items()}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(job.train.health_check_interval_s)
    if job.train.use_gpu and "DS_ACCELERATOR" not in os.environ:
        del env["DS_ACCELERATOR"]  # DeepSpeed detects CUDA on GPU workers by itself
    if not on_cluster(job):
        # No spot node can be preempted on a local Ray; the watcher is one more actor process
        # (~4 s of CPU) at the start of every fit.
        env[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
    os.environ.update(env)  # the local raylet and the Train controller read these at start
    if ray.is_initialized():
        return
    kwargs = OmegaConf.to_container(job.ray, resolve=True) or {}
    kwargs.setdefault("include_dashboard", False)
    runtime_env = dict(kwargs.pop("runtime_env", {}) or {})
    runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    ray.init(runtime_env=runtime_env, **kwargs)


@dataclass
class TrainingData:
    rows: list[ChatRow]
    encoded: list[EncodedRow]
    summary: dict = field(default_factory=dict)


def load_training_data(job, tokenizer, sink: BadRowSink) -> TrainingData:
    """Mixture rows that parse and fit data.max_length; the rest go to the sink (error or quarantine)."""
    rows, summary = load_mixture(job.data, sink, seed=int(job.seed))
    kept, encoded = [], []
    for row in rows:
        try:
            encoded.append(encode_row(tokenizer, row, int(job.data.max_length)))
            kept.append(row)
        except BadRow as bad:
            sink.handle(bad)
    summary["bad_rows"] = sink.counts
    summary["rows_encoded"] = len(encoded)
    if not encoded:
        raise ValueError("no usable training rows after validation (see data summary / quarantine)")
    return TrainingData(kept, encoded, summary)


def prepare_run(job, out: Path, tokenizer_path: str):
    """The trainee's tokenizer and the validated, tokenised training data of a run in `out`;
    bad rows go to <out>/quarantine.jsonl when data.on_bad_row=quarantine."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_path, job.model.revision, job.model.chat_template)
    (out / "quarantine.jsonl").unlink(missing_ok=True)  # the sink appends; a rerun starts clean
    with BadRowSink(job.data.on_bad_row, out / "quarantine.jsonl") as sink:
        data = load_training_data(job, tokenizer, sink)
    return tokenizer, data


def run_train(job, model_path: Optional[str] = None, run_name: Optional[str] = None,
              out_dir: Optional[str] = None) -> dict:
    """The `train` command: data -> STAR -> Ray Train; returns the run summary."""
    from .tracking import open_tracker
    from .train.trainer import run_training

    kind = job.loss.kind
    run_name = run_name or kind
    model_path = model_path or job.model.name_or_path
    tok_path = job.model.tokenizer or model_path
    out = Path(out_dir or Path(job.out_dir) / kind)
    tokenizer, data = prepare_run(job, out, tok_path)
    log(f"{kind}: {len(data.encoded)} rows ready; bad rows: {data.summary['bad_rows']['total']}")
    init_ray(job)
    check_placement(job)
    job_dict = OmegaConf.to_container(job, resolve=True)
    with open_tracker(job.tracking.wandb, job=job_dict, group=tracker_group(job, run_name),
                      role="driver", out_dir=str(out)) as tracker:
        if streams(kind) and job.scoring.mode == "stream":
            log(f"{kind}: streaming STAR rows into {job.train.workers} Ray Train workers")
            result, n_rows, star_summary = stream_train(job, data, out, tokenizer, model_path,
                                                        tok_path, run_name, tracker)
        else:
            if kind == "rs" and job.scoring.mode == "stream":
                log("rs: scoring every row before training (it plans batches from the "
                    "full-response verdicts)")
            rows, star_summary, _ = star_train_rows(job, data, kind, out, tokenizer, tracker)
            n_rows = len(rows)
            log(f"{kind}: training on {n_rows} rows with {job.train.workers} Ray Train workers")
            result = run_training(job, rows, model_path, tok_path, tokenizer.pad_token_id,
                                  str(out), run_name)
        summary = {"loss": kind, "model_dir": result.model_dir, "rows_trained": n_rows,
                   "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
                   "final_loss": result.log[-1]["loss"], "steps": len(result.log),
                   "worker_nodes": result.worker_nodes, "data": data.summary,
                   "star": star_summary}
        tracker.summary({"final_loss": summary["final_loss"], "steps": summary["steps"],
                         "rows_trained": n_rows, "train_seconds": result.train_seconds})
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def tracker_group(job, run_name: str) -> str:
    """The W&B group of a run: the driver's and rank 0's runs share it (train/trainer.py
    names rank 0's the same way)."""
    return f"{job.name}-{run_name}"


def run_score(job, html: Optional[str] = None) -> dict:
    """The `score` command: STAR trajectories of the training data into <out_dir>/score/star.jsonl
    (reusing and filling the STAR cache); with `html`, a heatmap page of them."""
    out = Path(job.out_dir) / "score"
    tokenizer, data = prepare_run(job, out, job.model.tokenizer or job.model.name_or_path)
    init_ray(job)
    _, summary, records = star_train_rows(job, data, "dss", out, tokenizer)
    summary.update(star_file=str(out / "star.jsonl"), data=data.summary)
    if html:
        from .star.heatmap import write_heatmap

        write_heatmap(records, html, title=f"STAR trajectories: {job.name}", worst_first=True)
        summary["html"] = html
    return summary


def load_eval_sets(job) -> tuple[list[ChatRow], list[ChatRow]]:
    """Held-out prompts; malformed eval rows are always an error (an eval must not shrink)."""
    with BadRowSink("error", None) as sink:
        sets = []
        for sources in (job.eval.harmful, job.eval.benign):
            by_source, _ = load_rows(list(sources), sink, seed=int(job.seed),
                                     require_response=False)
            sets.append([r for rows in by_source.values() for r in rows])
    return sets[0], sets[1]


def pool_judge(pool):
    """Judge whole responses with the guardrail actor pool: (n_judges, n) P(safe)."""
    import numpy as np

    from .guard.pool import ScoreRequest

    def judge(prompts: list[str], responses: list[str]) -> np.ndarray:
        requests = [ScoreRequest(str(i), p, r, [len(r)])
                    for i, (p, r) in enumerate(zip(prompts, responses))]
        scored = pool.score(requests)
        return np.stack([scored[q.key][:, 0] for q in requests], axis=1)

    return judge


def run_eval(job, models: dict[str, str]) -> dict:
    """The `eval` command: safety rate and capability of each named model folder; the judges
    run in the guardrail actor pool, like the training guardrails."""
    from .eval.evaluate import evaluate_model
    from .guard.pool import GuardPool

    harmful, benign = load_eval_sets(job)
    judges = list(job.eval.judge or job.guardrails)
    if not judges:
        raise ValueError("eval needs eval.judge or guardrails to judge responses")
    init_ray(job)
    results = {}
    with GuardPool(judges, job.scoring) as pool:
        for name, path in models.items():
            log(f"eval {name}: {len(harmful)} harmful prompts, {len(benign)} tasks")
            results[name] = evaluate_model(path, job.eval, harmful, benign, pool_judge(pool),
                                           job.star.combine, int(job.seed))
            log(f"eval {name}: safety {results[name]['safety_rate']:.3f} "
                f"capability {results[name]['capability']:.3f}")
    return results
