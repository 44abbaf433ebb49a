"""The step plan: every row once per epoch, the same global batches for any worker split; how a
micro-batch becomes tensors; the step feed's imports."""
import pytest
import torch

from stardss.train.batches import (
    TrainRow,
    collate,
    plan_steps,
    step_rows,
    step_tokens,
    train_row,
    worker_micro_batches,
)


def test_every_row_once_per_epoch_and_no_row_dropped():
    plan = plan_steps(23, 8, epochs=2, seed=1)
    assert len(plan) == 6 and all(len(s) == 8 for s in plan)
    for epoch in (plan[:3], plan[3:]):
        seen = [i for step in epoch for i in step if i is not None]
        assert sorted(seen) == list(range(23))
    assert plan[:3] != plan[3:]  # each epoch reshuffles
    assert plan == plan_steps(23, 8, epochs=2, seed=1)
    assert len(plan_steps(23, 8, epochs=2, seed=1, max_steps=4)) == 4


def test_drop_last_plans_full_steps_only_with_a_new_remainder_each_epoch():
    """30 rows, global batch 8: 3 full steps an epoch (4 without drop_last, the last with 2
    empty slots)."""
    plan = plan_steps(30, 8, epochs=2, seed=3, drop_last=True)
    assert len(plan) == 6 and all(None not in s for s in plan)
    assert len(plan_steps(30, 8, epochs=2, seed=3)) == 8
    epochs = [[i for s in plan[e * 3:(e + 1) * 3] for i in s] for e in (0, 1)]
    assert all(len(set(e)) == 24 for e in epochs)  # each row at most once an epoch
    left = [set(range(30)) - set(e) for e in epochs]
    assert all(len(x) == 6 for x in left) and left[0] != left[1]
    # the first full steps are those of the ceil plan: the same permutation
    assert plan[:3] == plan_steps(30, 8, epochs=2, seed=3)[:3]
    assert len(plan_steps(32, 8, epochs=1, seed=0, drop_last=True)) == 4  # nothing left over
    with pytest.raises(ValueError, match=r"train.drop_last: 5 rows fill no global batch of 8"):
        plan_steps(5, 8, epochs=1, seed=0, drop_last=True)


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
    # an empty slot: a donor row
    assert batch["input_ids"].tolist() == [[8, 9, 0], [8, 9, 0], [5, 6, 7]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert torch.allclose(batch["weights"][2], torch.tensor([1.0, 0.5, 0.2]))
    assert step_tokens(step_rows(rows, [1, None, 0])) == 3
    empty = collate([None, None], pad_id=3)  # a rank whose micro-batch is all padding
    assert empty["input_ids"].tolist() == [[3], [3]] and empty["loss_mask"].sum() == 0
    assert empty["attention_mask"].tolist() == [[1], [1]]  # attended: no all-masked softmax


def test_the_step_feed_imports_no_torch():
    # The StepFeed actor starts beside the guard pool and Ray Train in stream mode: importing
    # torch there (~3 s of CPU) would slow both.
    import subprocess
    import sys

    code = "import sys, stardss.train.feed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_row_of_every_turn_trains_its_turns_tokens_only():
    from stardss.data.format import EncodedRow

    # tokens 0-1 prompt, 2-3 turn 0, 4-5 the user turn between, 6-7 turn 1
    enc = EncodedRow("r", list(range(8)), 2, [(0, 1), (1, 2), (0, 0), (0, 0), (0, 1), (1, 2)],
                     "ab", token_turn=[0, 0, -1, -1, 1, 1], turn_texts=["ab", "ab"])
    row = train_row(enc)
    assert row.loss_mask == [0, 0, 1, 1, 0, 0, 1, 1] and row.weights == [1.0] * 8
    weighted = train_row(enc, [0.5, 0.5, 0.0, 0.0, 0.25, 0.25])
    assert weighted.loss_mask == row.loss_mask
    assert weighted.weights == [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.25, 0.25]
    assert step_tokens([row, None]) == 4
