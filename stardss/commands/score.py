"""`stardss score`: the STAR trajectories of the training data, without training."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..cluster.resources import init_ray
from ..config.schema import JobConfig
from ..console import Progress
from ..data.load import TrainingData, prepare_training_data
from ..star.score import StarWriter, score_requests
from ..train.batches import plan_for, stream_order
from .star import PoolMetrics, _cache_summary, needs_guardrails, open_pool, scorer_for


def run_score(job: JobConfig, html: Optional[str] = None) -> dict:
    """STAR trajectories of the training data into <out_dir>/score/star.jsonl (reusing and
    filling the STAR cache, scored in the order training will use the rows); with `html`, a
    heatmap page of them."""
    out = Path(job.out_dir) / "score"
    tokenizer, data = prepare_training_data(job.data, job.model,
                                            job.model.tokenizer or job.model.name_or_path, out,
                                            seed=job.seed)
    init_ray(job.ray, job.train)
    summary = score_to_file(job, data, out, tokenizer)
    summary.update(star_file=str(out / "star.jsonl"), data=data.summary)
    if html:
        from ..star.heatmap import read_star_jsonl, write_heatmap

        write_heatmap(read_star_jsonl(summary["star_file"]), html,
                      title=f"STAR trajectories: {job.name}", worst_first=True)
        summary["html"] = html
    return summary


def score_to_file(job: JobConfig, data: TrainingData, out_dir: Path, tokenizer) -> dict:
    """What commands.star.score_rows writes (star.jsonl in data order, one line per row id;
    the pool sees rows in stream mode's order), with each record written as it arrives
    (star.score.StarWriter) instead of all held until the last: memory does not grow with
    the records. Returns score_rows' summary."""
    needs_guardrails(job)
    started = time.perf_counter()
    scorer = scorer_for(job, False, tokenizer)
    requests = score_requests(data.rows, data.encoded, job.star.chunk)
    ids = getattr(data.encoded, "ids", None)  # rows in shards name themselves undecoded
    keys = ids() if ids is not None else [e.id for e in data.encoded]
    order = [keys[i] for i in stream_order(plan_for(job.train, job.seed, len(keys)))]
    sent = [requests[k] for k in dict.fromkeys(order + keys)]
    prefixes = 0
    with open_pool(job) as pool, StarWriter(out_dir / "star.jsonl", keys) as writer:
        for record in scorer.records(pool, sent, Progress(f"guardrail pool ({pool.size} actors)",
                                                          "response")):
            writer.add(record)
            prefixes += len(record.cuts)
        PoolMetrics(out_dir / "pool_metrics.jsonl", None)(pool.metrics)
    summary = {"mode": "cache" if job.scoring.mode == "cache" else "precompute",
               "scored": writer.written, "prefixes": prefixes,
               "score_seconds": time.perf_counter() - started, "guard_nodes": pool.node_ids}
    _cache_summary(scorer, summary)
    return summary
