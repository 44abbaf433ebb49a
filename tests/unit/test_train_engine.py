"""The policy's optimizer and learning-rate schedule."""
import pytest
import torch

from stardss.config.schema import OffloadConfig, TrainConfig
from stardss.train.engine import _optimizer, cosine_schedule


def test_optimizer_takes_lr_betas_and_weight_decay_from_the_job():
    train = TrainConfig(lr=2e-5, betas=[0.9, 0.95], weight_decay=0.1, use_gpu=False,
                        zero_stage=2, offload=OffloadConfig(optimizer="cpu"))
    opt = _optimizer([torch.nn.Parameter(torch.zeros(2))], train)
    group = opt.param_groups[0]
    # on CPU the offloaded state is host memory already: torch's AdamW, not DeepSpeed's CPU Adam
    assert type(opt) is torch.optim.AdamW
    assert (group["lr"], group["betas"], group["weight_decay"]) == (2e-5, (0.9, 0.95), 0.1)


def test_cosine_schedule_with_warmup():
    lrs = [cosine_schedule(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] > 1e-5 and lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
