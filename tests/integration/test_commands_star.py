"""STAR weights from the guardrail pool as the trainer receives them, and the STAR cache.

Training itself is tested in test_train_worker.py (1/2/4 workers, every loss kind, ZeRO 1-3)
and test_train_trainer.py (reference, LoRA, resume, offload, checkpoints, W&B)."""
from stardss.commands.star import training_rows
from stardss.config import derive
from stardss.data.load import load_training_data
from stardss.data.quarantine import BadRowSink
from stardss.train.kinds import LOSS_KINDS
from tests.helpers import make_job, tokenizer


def _job(tmp_path, base_model, *overrides):
    return make_job(tmp_path, base_model, "train.max_steps=4", *overrides)


def _dss_rows(job, tmp_path):
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    return training_rows(job, LOSS_KINDS["dss"], data, tmp_path, tok)


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
    _, summary = _dss_rows(derive(job, {"star.chunk.size": 3}), tmp_path)
    assert summary["cache"]["hits"] == 0 and summary["cache"]["misses"] == 522
