"""Real Ray Train + DeepSpeed runs on a tiny Llama: STAR weights in, a loadable checkpoint out."""
import json

import pytest
import ray
import torch

from stardss.config import load_job
from stardss.data.quarantine import BadRowSink
from stardss.run import init_ray, load_training_data, star_train_rows
from stardss.train.trainer import run_training
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


def test_one_worker_equals_two_workers_and_checkpoint_reloads(ray_session, base_model, tmp_path):
    """Same global batch (8) and seed: (1 worker, accum 2) and (2 workers, accum 1) give the
    same loss at every step, and the saved folder loads with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runs = {}
    for workers, accum in ((1, 2), (2, 1)):
        job = _job(tmp_path, base_model, f"train.workers={workers}", f"train.grad_accum={accum}",
                   "train.micro_batch_size=4")
        rows, _ = _dss_rows(job, tmp_path)
        runs[workers] = run_training(job, rows, base_model, base_model,
                                     tokenizer().pad_token_id, str(tmp_path / f"w{workers}"),
                                     f"w{workers}")
    one, two = ([s["loss"] for s in runs[w].log] for w in (1, 2))
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-5)
    assert [s["tokens"] for s in runs[1].log] == [s["tokens"] for s in runs[2].log]
    assert one[-1] < one[0]  # it learns

    model = AutoModelForCausalLM.from_pretrained(runs[2].model_dir)
    tok = AutoTokenizer.from_pretrained(runs[2].model_dir)
    assert tok.chat_template and len(tok) == len(tokenizer())
    base = AutoModelForCausalLM.from_pretrained(base_model)
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters())]
    assert all(moved)
    log = json.loads((tmp_path / "w2" / "model" / "stardss_train_log.json").read_text())
    assert log["job"]["loss"]["kind"] == "dss" and len(log["steps"]) == 4


def test_zero3_trains_and_saves(ray_session, base_model, tmp_path):
    from transformers import AutoModelForCausalLM

    # with a user DeepSpeed entry merged in (every parameter partitioned, none persistent)
    job = _job(tmp_path, base_model, "train.zero_stage=3", "train.max_steps=2",
               "train.deepspeed.zero_optimization.stage3_param_persistence_threshold=0")
    rows, _ = _dss_rows(job, tmp_path)
    result = run_training(job, rows, base_model, base_model, tokenizer().pad_token_id,
                          str(tmp_path / "z3"), "z3")
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    assert model.model.embed_tokens.weight.shape == base.model.embed_tokens.weight.shape
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)
