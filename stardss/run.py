"""The stages wired in data order, as the `score`, `train` and `eval` commands run them.

    data (load, validate, mix, tokenise) -> guard pool (P(safe) per prefix) -> STAR weights
    -> Ray Train + DeepSpeed -> Hugging Face checkpoint -> eval
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .data.format import EncodedRow, encode_row
from .data.load import load_mixture, load_rows
from .data.quarantine import BadRowSink
from .data.rows import BadRow, ChatRow
from .data.tokenizer import load_tokenizer

# Ray Train polls workers every 2 s by default, which makes every report cost that much.
_RAY_ENV = {"DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def log(msg: str) -> None:
    print(f"[stardss] {msg}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar (stderr) for loops that report (done, total)."""

    def __init__(self, what: str, unit: str = "it"):
        self.what, self.unit, self._bar = what, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"[stardss] {self.what}", unit=self.unit,
                             file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def init_ray(job) -> None:
    import ray

    env = {k: os.environ.get(k, v) for k, v in _RAY_ENV.items()}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(job.train.health_check_interval_s)
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


def open_cache(job):
    from .star.cache import StarCache

    if not job.star.cache:
        return None
    return StarCache(job.star.cache_dir or str(Path(job.out_dir) / "star_cache"))


def star_train_rows(job, data: TrainingData, kind: str, out_dir: Path, tokenizer):
    """Score with the guardrail pool as the loss needs, write star.jsonl; return rows, summary
    and the STAR records."""
    from .guard.pool import GuardPool
    from .star.cache import chunk_fingerprint, tokenizer_fingerprint
    from .star.score import score_star, unweighted_row, weighted_row, write_star

    if kind == "sft":
        return [unweighted_row(e) for e in data.encoded], {"scored": 0}, []
    if not job.guardrails:
        raise ValueError(f"loss.kind={kind} needs at least one entry in guardrails")
    chunk = job.star.chunk
    if kind == "rs":
        chunk_fp = chunk_fingerprint("full", 0)
    else:
        tok_fp = tokenizer_fingerprint(tokenizer) if chunk.unit == "tokens" else None
        chunk_fp = chunk_fingerprint(chunk.unit, chunk.size, tok_fp)
    started = time.perf_counter()
    cache = open_cache(job)
    with GuardPool(job.guardrails, job.scoring) as pool:
        records = score_star(data.rows, data.encoded, pool, job.star, chunk_fp, cache,
                             full_response_only=(kind == "rs"),
                             progress=Progress(f"guardrail pool ({pool.size} actors)",
                                               "response"))
    summary = {"scored": len(records), "prefixes": sum(len(r.cuts) for r in records),
               "score_seconds": time.perf_counter() - started}
    if cache is not None:
        hits = cache.stats.as_dict()
        summary["cache"] = {"dir": str(cache.root), **hits}
        log(f"STAR cache {cache.root}: {hits['hits']} guardrail-row hits, "
            f"{hits['misses']} misses")
    write_star(records, str(out_dir / "star.jsonl"))
    if kind == "rs":
        keep = [r.full_response_safe >= job.loss.rs_threshold for r in records]
        dropped = [r.id for r, k in zip(records, keep) if not k]
        summary["rs_dropped"] = len(dropped)
        with open(out_dir / "rs_dropped.json", "w") as f:
            json.dump(dropped, f, indent=1)
        return [unweighted_row(e) for e, k in zip(data.encoded, keep) if k], summary, records
    threshold = job.star.threshold
    rows = [weighted_row(e, r, threshold) for e, r in zip(data.encoded, records)]
    return rows, summary, records


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
    from .train.trainer import run_training

    kind = job.loss.kind
    model_path = model_path or job.model.name_or_path
    tok_path = job.model.tokenizer or model_path
    out = Path(out_dir or Path(job.out_dir) / kind)
    tokenizer, data = prepare_run(job, out, tok_path)
    log(f"{kind}: {len(data.encoded)} rows ready; bad rows: {data.summary['bad_rows']['total']}")
    init_ray(job)
    rows, star_summary, _ = star_train_rows(job, data, kind, out, tokenizer)
    log(f"{kind}: training on {len(rows)} rows with {job.train.workers} Ray Train workers")
    result = run_training(job, rows, model_path, tok_path, tokenizer.pad_token_id, str(out),
                          run_name or kind)
    summary = {"loss": kind, "model_dir": result.model_dir, "rows_trained": len(rows),
               "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
               "final_loss": result.log[-1]["loss"], "steps": len(result.log),
               "data": data.summary, "star": star_summary}
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


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
