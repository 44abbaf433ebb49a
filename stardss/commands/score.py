"""`stardss score`: the STAR trajectories of the training data, without training."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..cluster.resources import init_ray
from ..config.schema import JobConfig
from ..data.load import prepare_training_data
from .star import score_rows


def run_score(job: JobConfig, html: Optional[str] = None) -> dict:
    """STAR trajectories of the training data into <out_dir>/score/star.jsonl (reusing and
    filling the STAR cache, scored in the order training will use the rows); with `html`, a
    heatmap page of them."""
    out = Path(job.out_dir) / "score"
    tokenizer, data = prepare_training_data(job.data, job.model,
                                            job.model.tokenizer or job.model.name_or_path, out,
                                            seed=job.seed)
    init_ray(job.ray, job.train)
    records, summary = score_rows(job, data, full_response_only=False, plan_order=True,
                                  out_dir=out, tokenizer=tokenizer)
    summary.update(star_file=str(out / "star.jsonl"), data=data.summary)
    if html:
        from ..star.heatmap import write_heatmap

        write_heatmap(records, html, title=f"STAR trajectories: {job.name}", worst_first=True)
        summary["html"] = html
    return summary
