"""The DSS loss against hand computation and its limiting cases."""
import math

import pytest
import torch

from stardss.train.loss import kl_per_token, stardss_loss


def _batch(seed=0, B=2, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    ref = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    weights = torch.rand(B, T, generator=g)
    return logits, ref, ids, mask, weights


def _log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(x - m) for x in row)) + m
    return [x - z for x in row]


def test_dss_matches_hand_computation():
    logits, ref, ids, mask, weights = _batch()
    expected, ce_sum, kl_sum, n = 0.0, 0.0, 0.0, 0
    for b in range(2):
        for t in range(1, 5):  # token t is predicted at position t-1
            if not mask[b, t]:
                continue
            y = int(ids[b, t])
            lp = _log_softmax(logits[b, t - 1].tolist())[y]
            lr = _log_softmax(ref[b, t - 1].tolist())[y]
            w = float(weights[b, t])
            ce, kl = -lp, 0.5 * (lp - lr) ** 2
            expected += w * ce + (1 - w) * 0.5 * kl
            ce_sum, kl_sum, n = ce_sum + ce, kl_sum + kl, n + 1
    out = stardss_loss(logits, ids, mask, weights, "dss", ref, kl_coef=0.5, kl_estimator="k2")
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.ce.item() == pytest.approx(ce_sum, rel=1e-6)
    assert out.kl.item() == pytest.approx(kl_sum, rel=1e-6)
    assert out.tokens.item() == n == 6


def test_weight_one_is_sft():
    logits, ref, ids, mask, _ = _batch(1)
    ones = torch.ones(ids.shape)
    dss = stardss_loss(logits, ids, mask, ones, "dss", ref)
    sft = stardss_loss(logits, ids, mask, torch.rand(ids.shape), "sft")
    assert dss.total.item() == pytest.approx(sft.total.item(), rel=1e-7)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "full"])
def test_weight_zero_is_pure_kl(estimator):
    logits, ref, ids, mask, _ = _batch(2)
    out = stardss_loss(logits, ids, mask, torch.zeros(ids.shape), "dss", ref, 0.7, estimator)
    kl = kl_per_token(torch.log_softmax(logits[:, :-1], -1), torch.log_softmax(ref[:, :-1], -1),
                      ids[:, 1:], estimator)
    assert out.total.item() == pytest.approx(0.7 * (kl * mask[:, 1:]).sum().item(), rel=1e-6)
    assert out.total.item() == pytest.approx(0.7 * out.kl.item(), rel=1e-6)


def test_full_kl_is_the_true_divergence():
    p = torch.tensor([[[0.7, 0.2, 0.1]]]).log()
    q = torch.tensor([[[0.5, 0.25, 0.25]]]).log()
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    got = kl_per_token(p, q, torch.tensor([[0]]), "full").item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("estimator,vanishes", [("k2", True), ("k3", True), ("full", True),
                                                ("k1", False)])
def test_zero_weight_gradient_vanishes_at_the_reference(estimator, vanishes):
    _, _, ids, mask, _ = _batch(3)
    ref = torch.randn(2, 5, 7)
    logits = ref.clone().requires_grad_(True)
    weights = torch.ones(ids.shape)
    weights[0, 3] = 0.0  # one token under pure KL
    out = stardss_loss(logits, ids, mask, weights, "dss", ref, 0.5, estimator)
    out.total.backward()
    grad_at_zero_weight = logits.grad[0, 2]  # position 2 predicts token 3
    if vanishes:
        assert torch.count_nonzero(grad_at_zero_weight.abs() > 1e-7) == 0
    else:
        assert grad_at_zero_weight.abs().max() > 1e-3
    assert logits.grad[0, 1].abs().max() > 1e-3  # a weight-1 token still learns


def test_masked_tokens_contribute_nothing():
    logits, ref, ids, mask, weights = _batch(4)
    logits2 = logits.clone()
    logits2[0, 0] += 100.0  # predicts token 1 of row 0, which is masked
    a = stardss_loss(logits, ids, mask, weights, "dss", ref)
    b = stardss_loss(logits2, ids, mask, weights, "dss", ref)
    assert a.total.item() == b.total.item()


def test_bad_kind_and_missing_reference():
    logits, _, ids, mask, weights = _batch()
    with pytest.raises(ValueError, match="reference"):
        stardss_loss(logits, ids, mask, weights, "dss", None)
    with pytest.raises(ValueError, match="loss.kind"):
        stardss_loss(logits, ids, mask, weights, "ppo")
