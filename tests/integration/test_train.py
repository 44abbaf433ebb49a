"""STAR weights from the guardrail pool as the trainer receives them, and the STAR cache.

Training itself is tested in test_normalisation.py (1/2/4 workers, every loss kind, ZeRO 1-3)
and test_trainer_features.py (reference, LoRA, resume, offload, checkpoints, W&B)."""
import pytest
import ray

from stardss.config import load_job
from stardss.data.quarantine import BadRowSink
from stardss.run import init_ray, load_training_data, star_train_rows
from tests.helpers import tokenizer

pytestmark = pytest.mark.integration

DEMO_GUARD = "jobs/demo.yaml"


@pytest.fixture(scope="module")
def ray_session():
    job = load_job(DEMO_GUARD, ["model.name_or_path=unused"])
    init_ray(job)
    yield
    ray.shutdown()


def _job(tmp_path, base_model, *overrides):
    return load_job(DEMO_GUARD, [f"model.name_or_path={base_model}", f"out_dir={tmp_path}",
                                 "train.max_steps=4", "train.epochs=1", "train.lr=1e-3",
                                 "train.warmup_ratio=0", "train.log_every=1",
                                 "scoring.timeout_s=60", *overrides])


def _dss_rows(job, tmp_path):
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job, tok, sink)
    rows, summary, _ = star_train_rows(job, data, "dss", tmp_path, tok)
    return rows, summary


def test_dss_rows_carry_star_weights(ray_session, base_model, tmp_path):
    job = _job(tmp_path, base_model)
    rows, summary = _dss_rows(job, tmp_path)
    assert summary["scored"] == len(rows) == 522
    by_part = {}
    for r in rows:
        trained = [w for w, m in zip(r.weights, r.loss_mask) if m]
        by_part.setdefault(r.id.split("/")[1], []).append(min(trained))
    assert min(by_part["tasks"]) > 0.9  # benign answers are learned at full weight
    assert max(by_part["harmful"]) < 0.1  # revealed secrets are held to the reference
    assert max(by_part["attack_harmless_suffix"]) < 0.1  # the disclaimer does not launder them
    assert (tmp_path / "star.jsonl").exists()
    assert summary["cache"]["hits"] == 0 and summary["cache"]["misses"] == 522


def test_star_cache_serves_a_rerun_and_chunking_invalidates_it(ray_session, base_model, tmp_path):
    job = _job(tmp_path, base_model)
    first, _ = _dss_rows(job, tmp_path)
    again, summary = _dss_rows(job, tmp_path)
    assert summary["cache"]["hits"] == 522 and summary["cache"]["misses"] == 0
    assert [r.weights for r in again] == [r.weights for r in first]
    job.star.chunk.size = 3
    _, summary = _dss_rows(job, tmp_path)
    assert summary["cache"]["hits"] == 0 and summary["cache"]["misses"] == 522
