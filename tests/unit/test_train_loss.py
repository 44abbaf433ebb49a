"""The DSS loss against hand computation and its limiting cases."""
import math

import pytest
import torch

from stardss.train.loss import reference_token_logprobs, stardss_loss, token_terms


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
    out = stardss_loss(logits, ids, mask, weights, "dss", ref_logits=ref, kl_coef=0.5,
                       kl_estimator="k2")
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.ce.item() == pytest.approx(ce_sum, rel=1e-6)
    assert out.kl.item() == pytest.approx(kl_sum, rel=1e-6)
    assert out.tokens.item() == n == 6


def test_weight_one_is_sft():
    logits, ref, ids, mask, _ = _batch(1)
    ones = torch.ones(ids.shape)
    dss = stardss_loss(logits, ids, mask, ones, "dss", ref_logits=ref)
    sft = stardss_loss(logits, ids, mask, torch.rand(ids.shape), "sft")
    assert dss.total.item() == pytest.approx(sft.total.item(), rel=1e-7)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "full"])
def test_weight_zero_is_pure_kl(estimator):
    logits, ref, ids, mask, _ = _batch(2)
    out = stardss_loss(logits, ids, mask, torch.zeros(ids.shape), "dss", ref_logits=ref,
                       kl_coef=0.7, kl_estimator=estimator)
    _, kl = token_terms(logits[:, :-1], ids[:, 1:],
                        reference_token_logprobs(ref, ids), ref[:, :-1], estimator, True)
    assert out.total.item() == pytest.approx(0.7 * (kl * mask[:, 1:]).sum().item(), rel=1e-6)
    assert out.total.item() == pytest.approx(0.7 * out.kl.item(), rel=1e-6)
    # kl_only is dss with every weight 0, whatever the weights say
    only = stardss_loss(logits, ids, mask, torch.rand(ids.shape), "kl_only", ref_logits=ref,
                        kl_coef=0.7, kl_estimator=estimator)
    assert only.total.item() == pytest.approx(out.total.item(), rel=1e-6)


def test_full_kl_is_the_true_divergence():
    p = torch.tensor([[[0.7, 0.2, 0.1]]]).log()
    q = torch.tensor([[[0.5, 0.25, 0.25]]]).log()
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    _, kl = token_terms(p, torch.tensor([[0]]), ref_logits=q, estimator="full", with_kl=True)
    got = kl.item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("estimator,vanishes", [("k2", True), ("k3", True), ("full", True),
                                                ("k1", False)])
def test_zero_weight_gradient_vanishes_at_the_reference(estimator, vanishes):
    _, _, ids, mask, _ = _batch(3)
    ref = torch.randn(2, 5, 7)
    logits = ref.clone().requires_grad_(True)
    weights = torch.ones(ids.shape)
    weights[0, 3] = 0.0  # one token under pure KL
    out = stardss_loss(logits, ids, mask, weights, "dss", ref_logits=ref, kl_coef=0.5,
                       kl_estimator=estimator)
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
    a = stardss_loss(logits, ids, mask, weights, "dss", ref_logits=ref)
    b = stardss_loss(logits2, ids, mask, weights, "dss", ref_logits=ref)
    assert a.total.item() == b.total.item()


def test_bad_kind_and_missing_reference():
    logits, _, ids, mask, weights = _batch()
    with pytest.raises(ValueError, match="reference"):
        stardss_loss(logits, ids, mask, weights, "dss")
    with pytest.raises(ValueError, match="reference"):
        stardss_loss(logits, ids, mask, weights, "kl_only")
    with pytest.raises(ValueError, match="loss.kind"):
        stardss_loss(logits, ids, mask, weights, "ppo")


def test_reweight_scales_each_token_ce_by_its_weight():
    logits, _, ids, mask, _ = _batch(5)
    weights = torch.tensor([[0.2] * 5, [0.9] * 5])  # one weight per example
    sft = stardss_loss(logits, ids, mask, weights, "sft")
    ce, _ = token_terms(logits[:, :-1], ids[:, 1:])
    expected = (ce * mask[:, 1:] * weights[:, 1:]).sum()
    out = stardss_loss(logits, ids, mask, weights, "reweight")
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.ce.item() == pytest.approx(sft.total.item(), rel=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "full"])
def test_chunks_change_nothing_values_or_gradients(estimator):
    """Chunked (and checkpointed) token terms equal one pass over the whole sequence."""
    logits, ref, ids, mask, weights = _batch(6, B=3, T=11, V=13)
    grads, totals = [], []
    for chunk in (1, 3, 100):
        x = logits.clone().requires_grad_(True)
        out = stardss_loss(x, ids, torch.ones_like(ids), weights, "dss", ref_logits=ref,
                           kl_estimator=estimator, chunk=chunk)
        out.total.backward()
        totals.append(out.total.item())
        grads.append(x.grad)
    assert totals[0] == pytest.approx(totals[2], rel=1e-6)
    assert totals[1] == pytest.approx(totals[2], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_token_logprobs_give_the_loss_the_logits_give(estimator):
    """What a cache or the reference actor group hands over (log p_ref of each dataset token)
    is all k1-k3 need."""
    logits, ref, ids, mask, weights = _batch(7)
    a = stardss_loss(logits, ids, mask, weights, "dss", ref_logits=ref, kl_estimator=estimator)
    b = stardss_loss(logits, ids, mask, weights, "dss",
                     ref_token_logp=reference_token_logprobs(ref, ids), kl_estimator=estimator)
    assert a.total.item() == b.total.item()
    with pytest.raises(ValueError, match="full needs the reference model's logits"):
        stardss_loss(logits, ids, mask, weights, "dss",
                     ref_token_logp=reference_token_logprobs(ref, ids), kl_estimator="full")


def test_a_micro_batch_with_nothing_to_predict_still_backpropagates():
    """A rank whose slots are all empty gets one pad token per row (batches.collate)."""
    logits = torch.randn(2, 1, 7, requires_grad=True)
    ids, zeros = torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1)
    for kind in ("sft", "dss"):
        out = stardss_loss(logits, ids, zeros, zeros, kind, ref_logits=torch.randn(2, 1, 7))
        out.total.backward()
        assert out.total.item() == 0.0 and out.tokens.item() == 0


def test_rs_zero_weight_rows_train_nothing_but_stay_in_the_denominator():
    """rs_mode=zero_weight: an unsafe example (weight 0) adds no loss and no gradient, and its
    tokens still count (the caller divides by them): with the safe example alone the sum is
    the same, the token count smaller."""
    logits, _, ids, mask, _ = _batch(6)
    weights = torch.tensor([[1.0] * 5, [0.0] * 5])  # example 1 judged unsafe
    logits.requires_grad_(True)
    out = stardss_loss(logits, ids, mask, weights, "rs")
    out.total.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    alone = stardss_loss(logits[:1], ids[:1], mask[:1], weights[:1], "rs")
    assert out.total.item() == pytest.approx(alone.total.item(), rel=1e-6)
    assert out.tokens.item() == mask[:, 1:].sum().item() > alone.tokens.item()
    # every weight 1 (rs_mode=drop keeps only such rows): rs is sft
    ones = torch.ones_like(weights)
    sft = stardss_loss(logits, ids, mask, ones, "sft")
    assert stardss_loss(logits, ids, mask, ones, "rs").total.item() == sft.total.item()
