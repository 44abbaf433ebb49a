"""The step plan: every row once per epoch, the same global batches for any worker split; the
schedule and the DeepSpeed configs."""
import json

import pytest
import torch

from stardss.train.batches import (TrainRow, collate, count_tokens, plan_steps,
                                   worker_micro_batches)
from stardss.train.ds_config import deepspeed_config, reference_config, user_deepspeed
from stardss.train.engine import _optimizer, cosine_schedule


def test_every_row_once_per_epoch_and_no_row_dropped():
    plan = plan_steps(23, 8, epochs=2, seed=1)
    assert len(plan) == 6 and all(len(s) == 8 for s in plan)
    for epoch in (plan[:3], plan[3:]):
        seen = [i for step in epoch for i in step if i is not None]
        assert sorted(seen) == list(range(23))
    assert plan[:3] != plan[3:]  # each epoch reshuffles
    assert plan == plan_steps(23, 8, epochs=2, seed=1)
    assert len(plan_steps(23, 8, epochs=2, seed=1, max_steps=4)) == 4


@pytest.mark.parametrize("workers,micro,accum", [(1, 4, 2), (2, 4, 1), (2, 2, 2), (4, 2, 1)])
def test_workers_partition_each_global_batch(workers, micro, accum):
    plan = plan_steps(13, 8, epochs=1, seed=0)
    for slots in plan:
        parts = [i for r in range(workers)
                 for mb in worker_micro_batches(slots, r, micro, accum) for i in mb]
        assert parts == list(slots)


def test_collate_masks_empty_slots_and_padding():
    rows = [TrainRow("a", [5, 6, 7], [0, 1, 1], [1.0, 0.5, 0.2]),
            TrainRow("b", [8, 9], [0, 1], [1.0, 0.9])]
    batch = collate([rows[1], None, rows[0]], pad_id=0)
    assert batch["input_ids"].tolist() == [[8, 9, 0], [8, 9, 0], [5, 6, 7]]  # empty slot: a donor row
    assert batch["loss_mask"].tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert torch.allclose(batch["weights"][2], torch.tensor([1.0, 0.5, 0.2]))
    assert count_tokens(rows, [1, None, 0]) == 3
    empty = collate([None, None], pad_id=3)  # a rank whose micro-batch is all padding
    assert empty["input_ids"].tolist() == [[3], [3]] and empty["loss_mask"].sum() == 0
    assert empty["attention_mask"].tolist() == [[1], [1]]  # attended: no all-masked softmax


def test_optimizer_takes_lr_betas_and_weight_decay_from_the_job():
    train = dict(lr=2e-5, betas=[0.9, 0.95], weight_decay=0.1, use_gpu=False,
                 offload={"optimizer": "cpu"})
    opt = _optimizer([torch.nn.Parameter(torch.zeros(2))], train)
    group = opt.param_groups[0]
    # on CPU the offloaded state is host memory already: torch's AdamW, not DeepSpeed's CPU Adam
    assert type(opt) is torch.optim.AdamW
    assert (group["lr"], group["betas"], group["weight_decay"]) == (2e-5, (0.9, 0.95), 0.1)


def test_schedule_and_deepspeed_config():
    lrs = [cosine_schedule(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] > 1e-5 and lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))

    train = dict(zero_stage=3, micro_batch_size=4, grad_accum=2, grad_clip=1.0, bf16=True)
    cfg = deepspeed_config(train, world_size=2)
    assert cfg["train_batch_size"] == 16 and cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"] == {"enabled": True}

    # a user's DeepSpeed entries merge over the generated ones, nested keys included
    user = {"zero_optimization": {"offload_param": {"device": "cpu"}},
            "train_batch_size": 16, "communication_data_type": "fp32"}
    merged = deepspeed_config(train, 2, user_deepspeed({**train, "deepspeed": user}))
    assert merged["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"},
                                           "stage3_gather_16bit_weights_on_model_save": True}
    assert merged["communication_data_type"] == "fp32" and merged["gradient_clipping"] == 1.0
    assert "offload_param" not in cfg["zero_optimization"]  # the generated dict is untouched
    with pytest.raises(ValueError, match="train.deepspeed.gradient_accumulation_steps=4"):
        deepspeed_config(train, 2, {"gradient_accumulation_steps": 4})


def test_users_deepspeed_json_then_entries_merge_over_the_generated_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "train_batch_size": "auto", "gradient_clipping": "auto",  # HF-style: the job decides
        "zero_optimization": {"stage": 3, "overlap_comm": False, "reduce_bucket_size": 5}}))
    train = dict(zero_stage=3, micro_batch_size=2, grad_accum=1, grad_clip=0.5, bf16=False,
                 deepspeed_json=str(path),
                 deepspeed={"zero_optimization": {"reduce_bucket_size": 7}})
    cfg = deepspeed_config(train, 4, user_deepspeed(train))
    assert cfg["train_batch_size"] == 8 and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["overlap_comm"] is False
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 7  # entries beat the file
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="train.deepspeed_json.*not a JSON object"):
        user_deepspeed(train)
    path.write_text("{oops")
    with pytest.raises(ValueError, match="train.deepspeed_json: cannot read"):
        user_deepspeed(train)


def test_offload_and_the_reference_engine_config():
    train = dict(zero_stage=3, micro_batch_size=2, grad_accum=2, grad_clip=1.0, bf16=True,
                 offload={"optimizer": "cpu", "params": "cpu"})
    cfg = deepspeed_config(train, 2)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    ref = reference_config(cfg, offload=True)
    assert ref["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu",
                                                                      "pin_memory": False}}
    assert ref["bf16"] == {"enabled": True} and "optimizer" not in ref
    z2 = reference_config(deepspeed_config({**train, "zero_stage": 2, "offload": {}}, 2), False)
    assert z2["zero_optimization"] == {"stage": 0}  # a full copy per rank below ZeRO-3


def test_the_step_feed_imports_no_torch():
    # The StepFeed actor starts beside the guard pool and Ray Train in stream mode: importing
    # torch there (~3 s of CPU) would slow both.
    import subprocess
    import sys

    code = "import sys, stardss.train.feed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
