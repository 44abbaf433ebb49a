"""train.packing and train.group_by_length at the unit level, on the tiny Llama in plain torch:
the packed layout (positions restarting per row, offsets, masks), no attention across packed
rows, and packed = padded loss and parameter gradients for every loss kind with soft weights
and a live or cached reference (the cache filled in one layout and read in the other)."""
import pytest
import torch

from stardss.demo.model import build_tiny_llama
from stardss.train.batches import (
    TrainRow,
    by_length,
    check_packing,
    collate,
    model_inputs,
    pack_bins,
    padding_fraction,
)
from stardss.train.loss import stardss_loss
from stardss.train.reference import CachedLogprobs, InWorkerReference
from tests.helpers import tiny_config, tokenizer

PAD = 0


def _rows(lengths, seed=0, prefix="r"):
    """Rows of random tokens, a prompt of a third of each, soft weights on the response; the
    third row's token 0 is in its loss mask (never a target all the same)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, L in enumerate(lengths):
        start = 0 if i == 2 else max(1, L // 3)
        ids = torch.randint(5, 700, (L,), generator=g).tolist()
        w = torch.rand(L, generator=g).tolist()
        rows.append(TrainRow(f"{prefix}{i}", ids, [0] * start + [1] * (L - start),
                             [0.0] * start + w[start:]))
    return rows


def _model(seed, impl="sdpa"):
    model = build_tiny_llama(tiny_config(), tokenizer(), seed=seed).float()
    model.config._attn_implementation = impl
    return model.eval()  # no dropout either way: the two layouts must see the same function


def test_pack_lays_rows_out_with_restarting_positions_and_offsets():
    a, b, c = _rows([5, 3, 4])
    batch = collate([a, None, b, c], PAD, pack_length=8)
    # first-fit decreasing needs 2 sequences ([a, b], [c]: 8 wide); spread longest first over
    # 2, [a] and [c, b] are 7 wide
    assert batch["row_bin"].tolist() == [0, -1, 1, 1]
    assert batch["row_offset"].tolist() == [0, -1, 4, 0]
    assert batch["input_ids"].tolist() == [a.input_ids + [PAD] * 2, c.input_ids + b.input_ids]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    # a row's first token is never a target, in its row as packed (c's is in its loss mask)
    assert c.loss_mask[0] == 1
    assert batch["loss_mask"].tolist() == [a.loss_mask + [0, 0],
                                           [0] + c.loss_mask[1:] + [0] + b.loss_mask[1:]]
    assert batch["weights"][1, 4:].tolist() == pytest.approx(b.weights)
    assert "attention_mask" not in batch and "attention_mask" not in model_inputs(batch)
    assert padding_fraction([a, None, b, c], batch) == pytest.approx(1 - 12 / 14)
    padded = collate([a, None, b, c], PAD)
    assert padding_fraction([a, None, b, c], padded) == pytest.approx(1 - 12 / 20)
    assert padded["row_bin"].tolist() == [0, -1, 2, 3] and set(padded["row_offset"].tolist()) \
        == {0, -1}


def test_pack_of_empty_slots_is_one_pad_token_and_long_rows_get_their_own_bin():
    empty = collate([None, None], PAD, pack_length=8)
    assert empty["input_ids"].tolist() == [[PAD]] and empty["loss_mask"].tolist() == [[0]]
    assert empty["row_bin"].tolist() == [-1, -1]
    assert pack_bins([9, 2, 7, 1], capacity=8) == [[0], [2, 3], [1]]  # spread: 9 wide too
    assert pack_bins([5, 4, 3, 3, 1], capacity=10) == [[0, 3], [1, 2, 4]]  # 8 wide, not 10
    for lengths in ([3] * 7, [8, 1, 1, 6, 2, 5, 3], list(range(1, 12))):
        bins = pack_bins(lengths, 8)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 8 or len(b) == 1 for b in bins)


def test_by_length_reorders_a_ranks_rows_only():
    rows = _rows([4, 9, 2, 7, 5, 3])
    mbs = [[rows[0], rows[1]], [None, rows[2]], [rows[3], rows[4]], [rows[5], None]]
    got = by_length(mbs)
    assert [len(mb) for mb in got] == [2, 2, 2, 2]
    flat = [r for mb in got for r in mb]
    assert [r.id for r in flat if r is not None] == ["r1", "r3", "r4", "r0", "r5", "r2"]
    assert flat[-2:] == [None, None]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_no_attention_across_packed_rows(impl):
    """A row's logits, packed beside others, equal its logits alone, and do not change when
    its neighbours change."""
    model = _model(0, impl)
    mine = _rows([11], seed=1, prefix="me")[0]
    with torch.no_grad():
        alone = model(**model_inputs(collate([mine], PAD))).logits[0]
        for seed, lengths in ((2, [13, 6, 9]), (3, [4, 17, 2])):
            others = _rows(lengths, seed=seed)
            batch = collate([*others[:1], mine, *others[1:]], PAD, pack_length=40)
            b, at = int(batch["row_bin"][1]), int(batch["row_offset"][1])
            assert (batch["row_bin"] == b).sum() > 1  # it does share its sequence
            packed = model(**model_inputs(batch)).logits[b, at:at + 11]
            torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


class _AllOnesMask(torch.nn.Module):
    """A model called with a 2D all-ones padding mask whatever it is given: its mask builder
    then ignores the position ids, and packed rows attend to each other."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, **kwargs):
        kwargs["attention_mask"] = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, **kwargs)


def test_check_packing_refuses_a_model_that_attends_across_rows():
    model = _model(0).train()
    check_packing(model, 700, PAD, "tiny")  # the real Llama masks them
    assert model.training  # left as it was
    with pytest.raises(ValueError, match=r"^train.packing: tiny-ones lets packed rows attend "
                                         r"to each other .*set train.packing=false$"):
        check_packing(_AllOnesMask(model), 700, PAD, "tiny-ones")


def _loss_and_grads(model, reference, micro_batches, kind, estimator, pack_length):
    """(sum of the per-token loss, trained tokens, parameter gradients) over micro-batches,
    each collated in the layout `pack_length` says."""
    model.zero_grad(set_to_none=True)
    total = tokens = 0.0
    for rows in micro_batches:
        batch = collate(rows, PAD, pack_length)
        logits = model(**model_inputs(batch)).logits
        ref = {}
        if reference is not None and estimator == "full":
            ref["ref_logits"] = reference.hidden(batch)
        elif reference is not None:
            ref["ref_token_logp"] = reference.token_logprobs(batch, rows)
        out = stardss_loss(logits, batch["input_ids"], batch["loss_mask"], batch["weights"],
                           kind, kl_coef=0.7, kl_estimator=estimator, **ref)
        out.total.backward()
        total += float(out.total.detach())
        tokens += float(out.tokens)
    return total, tokens, {n: p.grad.clone() for n, p in model.named_parameters()}


CASES = [("sft", "k2", "live"), ("rs", "k2", "live"), ("reweight", "k2", "live"),
         ("dss", "k2", "live"), ("dss", "k1", "cached"), ("dss", "k3", "cached"),
         ("dss", "full", "live"), ("kl_only", "k1", "live"), ("kl_only", "k2", "cached")]


@pytest.mark.parametrize("kind,estimator,logprobs", CASES)
def test_packed_loss_and_gradients_equal_padded(kind, estimator, logprobs):
    rows = _rows([23, 41, 7, 15, 30, 9, 12, 5], seed=4)
    micro_batches = [rows[:3] + [None], rows[3:7], [rows[7], None, None, None]]
    model = _model(1)
    # a reference other than the policy, so the KL term and its gradient are not zero
    reference = InWorkerReference(_model(2).requires_grad_(False)) \
        if kind in ("dss", "kl_only") else None
    if logprobs == "cached":
        reference = CachedLogprobs(reference)
    want = _loss_and_grads(model, reference, micro_batches, kind, estimator, None)
    if logprobs == "cached":  # filled by the padded pass: every row is now read from it
        assert len(reference.table) == 8 and reference.forwards == 3
    got = _loss_and_grads(model, reference, micro_batches, kind, estimator, 48)
    if logprobs == "cached":
        assert reference.forwards == 3
        # and the other way round: filled packed, read padded
        fresh = CachedLogprobs(reference.inner)
        assert _loss_and_grads(model, fresh, micro_batches, kind, estimator, 48)[0] == \
            pytest.approx(got[0], rel=1e-6)
        assert _loss_and_grads(model, fresh, micro_batches, kind, estimator, None)[0] == \
            pytest.approx(want[0], rel=1e-6)
        assert fresh.forwards == 3
    assert got[1] == want[1] == sum(sum(r.loss_mask[1:]) for r in rows)
    assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-6)
    if kind != "kl_only":
        assert want[0] > 0
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    assert any(g.abs().max() > 1e-4 for g in want[2].values())
