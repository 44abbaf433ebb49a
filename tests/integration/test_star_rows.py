"""STAR-weighted table modes without a row table (commands/star.star_rows + feed.ShardSteps):
the rows, loss masks, weights and token counts of every step and rank are those of the
TrainRow table the driver built before (TableSteps), for dss (soft weights), rs drop and rs
zero_weight; and what the driver keeps per row after scoring, against that table."""
import gc
import json
import tracemalloc

import numpy as np
import pytest

from stardss.commands.star import score_rows, star_rows
from stardss.data.load import load_sharded_data
from stardss.data.quarantine import BadRowSink
from stardss.star.score import record_weights
from stardss.train.batches import plan_for, train_row
from stardss.train.feed import TableSteps, shard_steps
from stardss.train.kinds import LOSS_KINDS
from tests.helpers import make_job, tokenizer

MIX = ["data.sources.0.ratio=1.0", "data.mix_size=600"]  # 522 toy rows, 78 of them twice


@pytest.fixture(scope="module")
def sharded(ray_session, base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("star_rows")
    job = make_job(root, base_model, "star.cache=false", "train.micro_batch_size=3",
                   "train.grad_accum=2", *MIX)  # 600 rows in global batches of 12: short steps
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_sharded_data(job.data, tok, tok, root / "shards", sink, seed=job.seed,
                                 parallel=False)
    return job, data, root


def _same_steps(shard, table, workers):
    for step in range(table.n_steps):
        for rank in range(workers):
            (want, want_tokens), _ = table.step(step, rank)
            (have, have_tokens), _ = shard.step(step, rank)
            assert have_tokens == want_tokens
            for h_mb, w_mb in zip(have, want, strict=True):
                for h, w in zip(h_mb, w_mb, strict=True):
                    assert (h is None) == (w is None)
                    if h is None:
                        continue
                    assert (h.id, h.input_ids, h.loss_mask) == (w.id, w.input_ids, w.loss_mask)
                    # float32 on disk: exactly what collate makes of the table's float64
                    assert np.array_equal(np.asarray(h.weights, np.float32),
                                          np.asarray(w.weights, np.float32))


def _held(fn):
    """(fn(), bytes it leaves reachable, its peak) by tracemalloc."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        gc.collect()  # what is still reachable, not cycles waiting for the collector
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, now - before, peak - before


def test_dss_weights_file_trains_the_table_rows_and_the_driver_keeps_no_row(sharded):
    job, data, root = sharded
    n = len(data.positions)
    assert n == 600

    def table_rows():  # what commands/star.training_rows built before: a TrainRow per row
        records, _ = score_rows(job, data, False, True, root / "before", tokenizer())
        return [train_row(e, record_weights(r, e, job.star.threshold))
                for e, r in zip(data.encoded, records)]

    (root / "before").mkdir()
    (root / "after").mkdir()
    old, old_held, old_peak = _held(table_rows)
    (star, summary), held, peak = _held(
        lambda: star_rows(job, LOSS_KINDS["dss"], data, root / "after", tokenizer()))
    print(json.dumps({"dss_table_driver_bytes_per_row": {
        "before_held": old_held / n, "before_peak": old_peak / n,
        "after_held": held / n, "after_peak": peak / n}}))
    assert summary["scored"] == 522 and star.n_rows == n and star.keep is None
    # the table held three Python lists of a row's tokens (8-byte slots at least); now the
    # driver keeps a few bytes a row (the weights are in the file)
    assert old_held >= 3 * 8 * int(data.shards.lengths[data.positions].sum())
    assert held / n < 128, held / n
    assert (root / "after" / "star.jsonl").read_text() == \
        (root / "before" / "star.jsonl").read_text()
    assert not star.weights.row(0).flags.writeable  # mapped from the file, not copied
    t = job.train
    table = TableSteps(old, plan_for(t, job.seed, n), t.micro_batch_size, t.grad_accum, 10)
    _same_steps(shard_steps(data, t, job.seed, {}, weights=star.weights), table, t.workers)


@pytest.mark.parametrize("mode", ["drop", "zero_weight"])
def test_rs_rows_are_the_table_rows(sharded, mode):
    job, data, root = sharded
    out = root / f"rs-{mode}"
    out.mkdir()
    from stardss.config import derive

    job = derive(job, {"loss.kind": "rs", "loss.rs_mode": mode})
    records, _ = score_rows(job, data, True, False, out, tokenizer())
    keep = [r.full_response_safe >= job.loss.rs_threshold for r in records]
    assert 0 < sum(keep) < len(keep)
    if mode == "drop":  # the table before: the safe rows, unweighted
        old = [train_row(e) for e, k in zip(data.encoded, keep) if k]
    else:  # every row, the unsafe ones at weight 0
        old = [train_row(e) if k else train_row(e, [0.0] * (len(e.input_ids) - e.response_start))
               for e, k in zip(data.encoded, keep)]
    star, summary = star_rows(job, LOSS_KINDS["rs"], data, out, tokenizer())
    name = "rs_dropped" if mode == "drop" else "rs_zero_weighted"
    assert json.loads((out / f"{name}.json").read_text()) == \
        [r.id for r, k in zip(records, keep) if not k]
    assert summary[name] == len(keep) - sum(keep) and star.n_rows == len(old)
    assert (star.weights is None) == (mode == "drop") and star.trains_anything()
    t = job.train
    table = TableSteps(old, plan_for(t, job.seed, len(old)), t.micro_batch_size, t.grad_accum,
                       10)
    steps = shard_steps(data, t, job.seed, {}, positions=star.positions(data),
                        weights=star.weights)
    _same_steps(steps, table, t.workers)
