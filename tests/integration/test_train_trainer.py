"""The trainer's features on real Ray Train + DeepSpeed runs: the reference (in the workers, as
an actor group, behind LoRA; never updated), cached reference log-probs, LoRA checkpoints,
resume after a killed worker, ZeRO-3 and ZeRO-Offload, a user's DeepSpeed JSON, and W&B without
the API key leaking anywhere.

Every run trains the same rows (toy mixture, random soft weights) for 4 epochs of 3 steps, and
is compared with the plain run (`live`: ZeRO-2, reference in the workers, live). A fit costs
~25 s of worker-group start-up here, so each run combines the features that cannot change its
numbers.
"""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from stardss.commands.train import training_spec
from stardss.train.trainer import run_training, table_steps
from tests.helpers import make_job, soft_weighted_rows, tokenizer
from tests.wandb_support import all_bytes, read_run, run_dirs

STEPS = 12  # 24 rows, global batch 8, 4 epochs
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # shaped like a real W&B key
# Workers inherit the environment Ray starts with: the key is in it, as on a user's machine.
pytestmark = pytest.mark.ray_session(env={"WANDB_API_KEY": WANDB_KEY, "WANDB_SILENT": "true",
                                          "WANDB_DISABLE_GIT": "true", "WANDB_MODE": "offline"})


@pytest.fixture(scope="module")
def rows(ray_session, base_model):
    return soft_weighted_rows(_job("/tmp/unused", base_model))


def _job(root, base_model, *overrides):
    return make_job(root, base_model, "data.sources.0.ratio=1.0", "data.mix_size=24",
                    "train.epochs=4", "train.micro_batch_size=4", "reference.logprobs=live",
                    *overrides)


def _train(root, base_model, rows, name, *overrides):
    spec = training_spec(_job(root, base_model, *overrides), base_model, base_model,
                         tokenizer().pad_token_id, root / name, name)
    return run_training(spec, table_steps(rows, spec), on_cluster=False)


def _losses(result):
    return [s["loss"] for s in result.log]


def _weights(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def _checkpoints(storage):
    return sorted(p for p in storage.glob("*/checkpoint_*") if p.is_dir())


def _assert_reference_untouched(result, ranks=2):
    assert len(result.reference_digests) == ranks
    for d in result.reference_digests:
        assert d["before"] is not None and d["before"] == d["after"]


@pytest.fixture(scope="module")
def live(rows, base_model, tmp_path_factory):
    """dss, k2, reference in the workers, live; resumable checkpoints every 3 steps; W&B."""
    root = tmp_path_factory.mktemp("live")
    return root, _train(root, base_model, rows, "live", "train.checkpoint_every=3",
                        "train.max_failures=1", "tracking.wandb.mode=offline")


def test_live_run_checkpoints_tracks_and_keeps_the_reference(live):
    root, result = live
    assert len(result.log) == STEPS and result.resumed_from == []
    assert _losses(result)[-1] < _losses(result)[0]  # it learns
    assert all(s["ref_forwards"] == 1 for s in result.log)  # one micro-batch per rank per step
    _assert_reference_untouched(result)
    folder = root / "live" / "model"
    assert {"model.safetensors", "tokenizer.json", "stardss_job.yaml",
            "stardss_train_log.json"} <= {p.name for p in folder.iterdir()}
    assert "chat_template" in (folder / "tokenizer_config.json").read_text() or \
        (folder / "chat_template.jinja").exists()
    assert "kind: dss" in (folder / "stardss_job.yaml").read_text()
    # resumable checkpoints at steps 3, 6, 9 were taken (the newest ones kept, then the final)
    ckpts = _checkpoints(root / "live" / "ray_train")
    assert len(ckpts) == 2
    assert any((c / "deepspeed").is_dir() for c in ckpts)
    (run,) = [read_run(d) for d in run_dirs(root / "live" / "wandb")]
    history = run["history"]
    assert [h["train/loss"] for h in history if "train/loss" in h] == _losses(result)
    assert all(h["train/tokens_per_s"] > 0 for h in history if "train/tokens_per_s" in h)
    hists = [h for h in history if h.get("train/token_weights/_type") == "histogram"]
    assert hists and sum(hists[0]["train/token_weights/values"]) > 0  # STAR weights, step 1
    # The API key sits in every process's environment and is written nowhere.
    assert WANDB_KEY.encode() not in all_bytes(root)
    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert WANDB_KEY.encode() not in all_bytes(session_logs)


def test_reference_actor_group_under_zero3_offload_and_a_users_json_trains_like_zero2(
        live, rows, base_model, tmp_path):
    """Where the reference lives, partitioning and offload change where numbers are, not what
    they are: the same losses and weights as the in-worker ZeRO-2 run."""
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_batch_size": "auto",  # every parameter partitioned
                               "zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    root, ref = live
    group = _train(root, base_model, rows, "group", "reference.placement=actor_group",
                   "reference.actors=1", "reference.num_cpus=0.5", "train.zero_stage=3",
                   f"train.deepspeed_json={cfg}", "train.offload.optimizer=cpu",
                   "train.offload.params=cpu")
    assert _losses(group) == pytest.approx(_losses(ref), rel=1e-5)
    _assert_reference_untouched(group)  # asked of the actor by each rank
    _assert_same_weights(root / "group" / "model", root / "live" / "model")


def _assert_same_weights(a, b):
    want, got = _weights(b), _weights(a)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-6)


def test_lora_under_zero3_bf16_trains_adapters_against_the_base_and_saves_both_forms(
        live, rows, base_model):
    """The paper's precision and the partitioned case (weights gathered to save);
    tests/unit/test_train_checkpoint.py covers saving an unpartitioned model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, _ = live
    result = _train(root, base_model, rows, "lora", "model.lora.r=4", "model.lora.alpha=8",
                    "train.zero_stage=3", "train.bf16=true", "train.lr=1e-2")
    _assert_reference_untouched(result)  # the frozen base under the adapter
    assert result.log[0]["kl"] == 0.0  # adapters start at zero: policy == reference
    assert result.log[-1]["kl"] > 0 and _losses(result)[-1] < _losses(result)[0]
    folder = root / "lora" / "model"
    merged = _weights(folder)
    assert merged["model.embed_tokens.weight"].dtype == torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    base_state = base.state_dict()
    assert torch.equal(merged["model.embed_tokens.weight"], base_state["model.embed_tokens.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base_state[q])
    adapted = PeftModel.from_pretrained(base, str(folder / "adapter"))
    ids = torch.tensor([rows[0].input_ids])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits
        got = adapted(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16


def _registered_checkpoints(storage) -> int:
    """Checkpoints Ray Train's controller has registered (a folder appears before that)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0  # being written
    return 0


def _kill_a_worker_after_first_checkpoint(storage, stop):
    """SIGKILL one Ray Train worker process once a resumable checkpoint is registered (Ray
    titles a worker's process after the actor's running method)."""
    import psutil

    while not stop.is_set():
        if _registered_checkpoints(storage):
            workers = [p.pid for p in psutil.process_iter(["cmdline"])
                       if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                return
        time.sleep(0.05)


def test_killed_worker_resumes_zero3_with_cached_logprobs_same_steps_order_and_loss(
        live, rows, base_model):
    """A worker SIGKILLed after a checkpoint: Ray Train restarts the group, which resumes from
    its sharded ZeRO-3 state at the next step of the same plan. Cached reference log-probs
    (the reference in the workers, its shards offloaded) give the live run's loss: the cache
    is rebuilt after the restart and serves every later epoch."""
    root, ref = live
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(root / "killed" / "ray_train", stop), daemon=True)
    killer.start()
    try:
        result = _train(root, base_model, rows, "killed", "train.checkpoint_every=3",
                        "train.max_failures=1", "train.zero_stage=3", "reference.offload=true",
                        "reference.logprobs=cached")
    finally:
        stop.set()
    assert result.resumed_from and result.resumed_from[0] % 3 == 0  # at a checkpoint
    assert [s["step"] for s in result.log] == list(range(1, STEPS + 1))
    assert [s["tokens"] for s in result.log] == [s["tokens"] for s in ref.log]  # data order
    assert _losses(result) == pytest.approx(_losses(ref), rel=1e-5)
    forwards = [s["ref_forwards"] for s in result.log]
    assert forwards[0] == 1 and forwards[-3:] == [0, 0, 0]  # the last epoch: all cached
    _assert_reference_untouched(result)
    _assert_same_weights(root / "killed" / "model", root / "live" / "model")


def test_packed_grouped_run_with_cached_logprobs_trains_like_the_padded_one(
        live, rows, base_model):
    """train.packing + train.group_by_length end to end (2 workers, the packing probe at
    start, cached reference log-probs filled and read in the packed layout): the padded live
    run's losses and weights; the cache serves every epoch after the first."""
    root, ref = live
    result = _train(root, base_model, rows, "packed", "train.packing=true",
                    "train.group_by_length=true", "reference.logprobs=cached")
    assert [s["tokens"] for s in result.log] == [s["tokens"] for s in ref.log]
    assert _losses(result) == pytest.approx(_losses(ref), rel=1e-5)
    forwards = [s["ref_forwards"] for s in result.log]
    assert forwards[:3] == [1, 1, 1] and forwards[3:] == [0] * (STEPS - 3)
    _assert_same_weights(root / "packed" / "model", root / "live" / "model")
