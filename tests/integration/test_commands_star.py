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


def _rs(job, out):
    out.mkdir()
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    return training_rows(job, LOSS_KINDS["rs"], data, out, tok)


def test_rs_drops_or_zero_weights_the_rows_judged_unsafe(ray_session, base_model, tmp_path):
    """loss.rs_mode: drop leaves the unsafe rows out (fewer steps); zero_weight keeps every
    row, the unsafe ones at weight 0, so the plan and each step's token count (the loss's
    denominator) are sft's."""
    import json

    from stardss.train.batches import plan_for, step_rows, step_tokens, train_row

    job = _job(tmp_path, base_model, "loss.kind=rs", "train.max_steps=null")
    dropped, summary = _rs(job, tmp_path / "drop")
    zeroed, zsummary = _rs(derive(job, {"loss.rs_mode": "zero_weight"}), tmp_path / "zero")
    unsafe = json.loads((tmp_path / "zero" / "rs_zero_weighted.json").read_text())
    assert unsafe == json.loads((tmp_path / "drop" / "rs_dropped.json").read_text())
    assert summary["rs_dropped"] == zsummary["rs_zero_weighted"] == len(unsafe) > 0
    assert len(zeroed) == 522 == len(dropped) + len(unsafe)
    for r in zeroed:
        trained = {w for w, m in zip(r.weights, r.loss_mask) if m}
        assert trained == ({0.0} if r.id in unsafe else {1.0})
    assert [r.id for r in dropped] == [r.id for r in zeroed if r.id not in unsafe]
    tok = tokenizer()
    with BadRowSink("error") as sink:
        sft_rows = [train_row(e) for e in load_training_data(job.data, tok, sink,
                                                             seed=job.seed).encoded]
    sft_plan = plan_for(job.train, job.seed, len(sft_rows))
    assert plan_for(job.train, job.seed, len(zeroed)) == sft_plan
    assert len(plan_for(job.train, job.seed, len(dropped))) < len(sft_plan)
    assert [step_tokens(step_rows(zeroed, s)) for s in sft_plan] == \
        [step_tokens(step_rows(sft_rows, s)) for s in sft_plan]


def test_rs_on_data_judged_all_unsafe_writes_the_initial_model_with_a_warning(
        ray_session, base_model, tmp_path, capsys):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from stardss.commands.train import run_train

    for mode in ("drop", "zero_weight"):
        job = _job(tmp_path, base_model, "loss.kind=rs", f"loss.rs_mode={mode}",
                   "guardrails.0.bias=-60")  # every P(safe) < 1e-20
        summary = run_train(job, out_dir=str(tmp_path / mode))
        assert summary["steps"] == 0 and summary["rows_trained"] == 0
        assert summary["final_loss"] is None
        assert "judge every one of the 522 rows unsafe" in summary["star"]["warning"]
        assert "warning: rs: the guardrails judge every one" in capsys.readouterr().err
        with open(f"{summary['model_dir']}/stardss_train_log.json") as f:
            assert json.load(f)["metrics"]["untrained"] == summary["star"]["warning"]
        base = AutoModelForCausalLM.from_pretrained(base_model).state_dict()
        out = AutoModelForCausalLM.from_pretrained(summary["model_dir"]).state_dict()
        assert base.keys() == out.keys() and all(torch.equal(base[k], out[k]) for k in base)
