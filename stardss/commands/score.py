"""`stardss score`: the STAR trajectories of the training data, without training."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..cluster.resources import init_ray
from ..config.schema import JobConfig
from ..data.load import TrainingData, prepare_training_data
from .star import score_each
from .train import shard_root


def run_score(job: JobConfig, html: Optional[str] = None) -> dict:
    """STAR trajectories of the training data into <out_dir>/score/star.jsonl (reusing and
    filling the STAR cache, scored in the order training will use the rows); with `html`, a
    heatmap page of them."""
    out = Path(job.out_dir) / "score"
    tokenizer, data = prepare_training_data(job.data, job.model,
                                            job.model.tokenizer or job.model.name_or_path, out,
                                            seed=job.seed, shard_root=shard_root(job))
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
    return score_each(job, data, False, True, out_dir, tokenizer, lambda record: None)
