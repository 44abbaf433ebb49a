"""The DeepSpeed configs: the policy's, generated from the train section with the user's
DeepSpeed JSON and entries merged over it, and the frozen reference's."""
import json
from dataclasses import replace

import pytest

from stardss.config.schema import OffloadConfig, TrainConfig
from stardss.train.ds_config import deepspeed_config, reference_config, user_deepspeed


def test_deepspeed_config_from_the_train_section():
    train = TrainConfig(zero_stage=3, micro_batch_size=4, grad_accum=2, grad_clip=1.0, bf16=True)
    cfg = deepspeed_config(train, world_size=2)
    assert cfg["train_batch_size"] == 16 and cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"] == {"enabled": True}

    # a user's DeepSpeed entries merge over the generated ones, nested keys included
    user = {"zero_optimization": {"offload_param": {"device": "cpu"}},
            "train_batch_size": 16, "communication_data_type": "fp32"}
    merged = deepspeed_config(train, 2, user_deepspeed(replace(train, deepspeed=user)))
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
    train = TrainConfig(zero_stage=3, micro_batch_size=2, grad_accum=1, grad_clip=0.5, bf16=False,
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
    train = TrainConfig(zero_stage=3, micro_batch_size=2, grad_accum=2, grad_clip=1.0, bf16=True,
                        offload=OffloadConfig(optimizer="cpu", params="cpu"))
    cfg = deepspeed_config(train, 2)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    ref = reference_config(cfg, offload=True)
    assert ref["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu",
                                                                      "pin_memory": False}}
    assert ref["bf16"] == {"enabled": True} and "optimizer" not in ref
    z2 = reference_config(deepspeed_config(replace(train, zero_stage=2,
                                                   offload=OffloadConfig()), 2), False)
    assert z2["zero_optimization"] == {"stage": 0}  # a full copy per rank below ZeRO-3


