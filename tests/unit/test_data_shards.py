"""Tokenised shards (data/shards.py, data/ingest.py in this process): the same rows, bad rows and
summary as the in-memory path, round-trip of ids / offsets / weights, reuse by content key, the
workers' step source, and what the driver holds per row."""
from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stardss.config import load_job
from stardss.data.ingest import ingest
from stardss.data.load import load_sharded_data, load_training_data
from stardss.data.quarantine import BadRowSink
from stardss.data.rows import BadRow
from stardss.data.sources import jsonl_ranges
from stardss.data.tokenizer import tokenizer_fingerprint
from stardss.train.batches import plan_steps, train_row
from stardss.train.feed import ShardSteps, TableSteps
from tests.helpers import DEMO_JOB, tokenizer

WORDS = "alpha beta gamma delta safe harm help answer question model naïve 東京".split()


def _rows(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 12))),
                        "response": " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) + " "})
            for _ in range(n)]


def _job(tmp_path, *overrides):
    return load_job(DEMO_JOB, ["model.name_or_path=unused", "data.max_length=96",
                               f"out_dir={tmp_path}", *overrides])


def _both(job, tmp_path, name, target_bytes=4000):
    """(in-memory TrainingData, ShardedData, their quarantine files' text)."""
    tok = tokenizer()
    with BadRowSink(job.data.on_bad_row, tmp_path / f"{name}-mem.jsonl") as sink:
        ref = load_training_data(job.data, tok, sink, seed=job.seed)
    with BadRowSink(job.data.on_bad_row, tmp_path / f"{name}-shard.jsonl") as sink:
        got = load_sharded_data(job.data, tok, tok, tmp_path / "shards", sink, seed=job.seed,
                                parallel=False, target_bytes=target_bytes)
    read = [(p.read_text() if p.exists() else None)
            for p in (tmp_path / f"{name}-mem.jsonl", tmp_path / f"{name}-shard.jsonl")]
    return ref, got, read


@pytest.fixture
def corpus(tmp_path):
    """Two sources: one with blank lines, a row that does not parse and one too long for
    max_length=96; one clean."""
    lines = _rows(300)
    lines[7] = '{"prompt": "no response"}'
    lines[40] = json.dumps({"prompt": "p", "response": "word " * 200})
    lines[41] = ""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines) + "\n")
    b.write_text("\n".join(_rows(120, seed=1)))  # no final newline
    return a, b


def test_shards_round_trip_the_rows_bad_rows_and_summary(tmp_path, corpus):
    a, b = corpus
    job = _job(tmp_path, f"data.sources=[{{path: {a}, ratio: 2}}, {{path: {b}, ratio: 1}}]",
               "data.on_bad_row=quarantine", "data.mix_size=500")
    ref, got, (q_mem, q_shard) = _both(job, tmp_path, "mix")
    assert len(got.shards.parts) > 4  # several pieces per file: the cuts are exercised
    assert [vars(e) for e in got.encoded] == [vars(e) for e in ref.encoded]  # ids + offsets
    assert list(got.rows) == ref.rows
    assert {k: v for k, v in got.summary.items() if k != "shards"} == ref.summary
    assert q_shard == q_mem and q_mem.count("\n") > 2  # too-long row repeated by the mixture
    records = [json.loads(x) for x in q_mem.splitlines()]
    assert records[0]["row"] == 7 and 40 in {r["row"] for r in records[1:]}
    assert all(r["reason"].startswith("over max length") for r in records[1:])


def test_the_first_bad_row_stops_the_run_and_leaves_no_shards(tmp_path, corpus):
    a, _ = corpus
    lines = a.read_text().splitlines()
    lines[250] = "{not json"
    a.write_text("\n".join(lines) + "\n")
    job = _job(tmp_path, f"data.sources=[{{path: {a}}}]", "data.on_bad_row=error")
    with pytest.raises(BadRow) as err, BadRowSink("error") as sink:
        load_sharded_data(job.data, tokenizer(), tokenizer(), tmp_path / "shards", sink,
                          seed=0, parallel=False, target_bytes=2000)
    assert str(err.value) == f"{a}: row 7: missing field 'response'"
    assert not [p for p in (tmp_path / "shards").iterdir()]  # nothing half-written is reused


def test_shards_are_reused_by_content_key(tmp_path, corpus):
    a, _ = corpus
    tok = tokenizer()
    fp = tokenizer_fingerprint(tok)
    job = _job(tmp_path, f"data.sources=[{{path: {a}}}]")
    src = job.data.sources[0]

    def run(max_length=96, fingerprint=fp):
        return ingest([src], tok, fingerprint, max_length, tmp_path / "shards", seed=0,
                      stop_at_bad=False, parallel=False, target_bytes=3000)[0]

    first = run()
    parts = sorted(first.folder.glob("part-*.arrow"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = run()
    assert again.reused and again.folder == first.folder and again.bad == first.bad
    assert [p.stat().st_mtime_ns for p in parts] == stamps  # not written again
    assert not run(max_length=97).reused and not run(fingerprint="other").reused
    a.write_text(a.read_text().replace("alpha", "omega", 1))  # same size, other content
    changed = run()
    assert not changed.reused and changed.folder != first.folder
    assert len(list((tmp_path / "shards").iterdir())) == 4


def test_jsonl_pieces_cover_the_file_at_line_starts(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = ["", "a" * 50, "b" * 10, "", "c" * 70, "d", "e" * 33]
    path.write_bytes(("\n".join(lines)).encode())
    src = _job(tmp_path, f"data.sources=[{{path: {path}}}]").data.sources[0]
    data = path.read_bytes()
    for target in (1, 20, 60, 10_000):
        pieces = jsonl_ranges(src, target)
        assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
        assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))
        for start, _, line in pieces:
            assert start == 0 or data[start - 1:start] == b"\n"
            assert data[:start].count(b"\n") == line
    # cut after the first newline at or past 20 bytes from the piece's start
    assert jsonl_ranges(src, 20) == [(0, 52, 0), (52, 135, 2), (135, 170, 5)]


def test_parquet_pieces_by_row_group(tmp_path):
    path = tmp_path / "x.parquet"
    rows = [json.loads(r) for r in _rows(90, seed=3)]
    rows[55]["response"] = None
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=20)
    job = _job(tmp_path, f"data.sources=[{{path: {path}}}]", "data.on_bad_row=quarantine")
    ref, got, (q_mem, q_shard) = _both(job, tmp_path, "pq", target_bytes=640 * 30)
    assert len(got.shards.parts) == 3  # 5 row groups of 20, two (or one) per piece
    assert [vars(e) for e in got.encoded] == [vars(e) for e in ref.encoded]
    assert q_shard == q_mem and '"row": 55' in q_mem


def test_shard_steps_give_the_table_steps_rows_and_tokens(tmp_path, corpus):
    """What a worker trains from the shards equals the table it got before: every step, every
    rank, ids, loss masks, weights and the step's token count."""
    a, b = corpus
    job = _job(tmp_path, f"data.sources=[{{path: {a}}}, {{path: {b}}}]",
               "data.on_bad_row=quarantine")
    ref, got, _ = _both(job, tmp_path, "steps")
    plan = plan_steps(len(ref.encoded), 8, 2, seed=5)  # last step of each epoch is short
    table = TableSteps([train_row(e) for e in ref.encoded], plan, 2, 2, 10)
    shard = ShardSteps(got.shards, got.positions, plan, 2, 2)
    import pickle

    shipped = pickle.loads(pickle.dumps(shard))  # as the workers get it: folders, not rows
    assert len(pickle.dumps(shard)) < 40 * len(ref.encoded) + 20 * 8 * len(plan) + 4096
    assert any(None in s for s in plan)
    for step in range(len(plan)):
        for rank in (0, 1):
            (want, want_tokens), _ = table.step(step, rank)
            (have, have_tokens), wait = shipped.step(step, rank)
            assert have_tokens == want_tokens and wait == 0.0
            assert [[r and vars(r) for r in mb] for mb in have] == \
                [[r and vars(r) for r in mb] for mb in want]


def test_the_driver_holds_metadata_not_rows(tmp_path):
    """The sharded path keeps well under 1 KB a row alive in the driver (numpy metadata; the
    rows are in mapped files), where the in-memory path keeps tens of KB a row."""
    path = tmp_path / "big.jsonl"
    n = 4000
    path.write_text("\n".join(_rows(n, seed=9)) + "\n")
    job = _job(tmp_path, f"data.sources=[{{path: {path}}}]", "data.max_length=256")
    tok = tokenizer()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with BadRowSink("error") as sink:
            data = load_sharded_data(job.data, tok, tok, tmp_path / "shards", sink, seed=0,
                                     parallel=False)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(data.positions) == n
    assert held / n < 1024, held / n
    assert data.shards.lengths.dtype.itemsize == 4 and len(data.shards.lengths) == n


def test_weighted_shard_steps_give_the_weighted_table_steps_rows(tmp_path, corpus):
    """STAR-weighted table modes: rows from the shards, weights from the run's weights file
    (written out of order, a repeated row's copies sharing its values, some rows unweighted,
    rs drop's subset of rows) equal the TableSteps of the same weighted TrainRows: every step,
    every rank, ids, loss masks, weights (float32, the loss's dtype) and token counts."""
    import pickle

    import numpy as np

    from stardss.train.batches import plan_for
    from stardss.train.feed import shard_steps
    from stardss.train.weights import WeightsWriter, first_copies

    a, b = corpus
    job = _job(tmp_path, f"data.sources=[{{path: {a}, ratio: 2}}, {{path: {b}, ratio: 1}}]",
               "data.on_bad_row=quarantine", "data.mix_size=500", "train.micro_batch_size=2",
               "train.grad_accum=2", "train.workers=2", "train.epochs=2")
    ref, got, _ = _both(job, tmp_path, "weighted")
    ids = [e.id for e in ref.encoded]
    first, copies_of = first_copies(ids)
    assert len(first) < len(ids)  # the mixture repeats rows
    rng = np.random.default_rng(3)
    weights = {i: rng.random(len(ref.encoded[i].input_ids) - ref.encoded[i].response_start)
               .astype(np.float32) for i in first.values()}
    unweighted = set(list(first.values())[::7])
    writer = WeightsWriter(tmp_path / "run", len(ids))
    for i in rng.permutation(sorted(first.values())).tolist():  # records arrive in any order
        if i not in unweighted:
            writer.put(i, weights[i])
    tw = pickle.loads(pickle.dumps(writer.close(copies_of)))  # as a worker gets it: a folder
    assert not (tmp_path / "run" / ".weights.f32.tmp").exists()

    def row(i):
        k = int(copies_of[i])
        return train_row(ref.encoded[i], None if k in unweighted else weights[k].tolist())

    short = []  # the plans have short steps (empty slots)
    for keep in (None, np.flatnonzero(np.arange(len(ids)) % 3 != 1)):
        rows = list(range(len(ids))) if keep is None else keep.tolist()
        if keep is None:
            steps = shard_steps(got, job.train, job.seed, {}, weights=tw)
        else:  # a kept subset without weights (rs drop)
            steps = shard_steps(got, job.train, job.seed, {}, positions=got.positions[keep])
        plan = plan_for(job.train, job.seed, len(rows))
        want_rows = [row(i) if keep is None else train_row(ref.encoded[i]) for i in rows]
        table = TableSteps(want_rows, plan, 2, 2, 10)
        shipped = pickle.loads(pickle.dumps(steps))
        short.append(any(None in s for s in plan))
        assert len(plan) == shipped.n_steps
        for step in range(len(plan)):
            for rank in (0, 1):
                (want, want_tokens), _ = table.step(step, rank)
                (have, have_tokens), _ = shipped.step(step, rank)
                assert have_tokens == want_tokens
                assert [[r and vars(r) for r in mb] for mb in have] == \
                    [[r and vars(r) for r in mb] for mb in want]
    assert any(short)
    # the digest names the weights: other weights, another run to resume
    writer = WeightsWriter(tmp_path / "other", len(ids))
    for i in first.values():
        writer.put(i, weights[i] * 0.5)
    other = shard_steps(got, job.train, job.seed, {}, weights=writer.close(copies_of))
    assert other.digest != shard_steps(got, job.train, job.seed, {}, weights=tw).digest


def test_a_weights_file_of_other_rows_fails_naming_it(tmp_path, corpus):
    import numpy as np

    from stardss.train.weights import WeightsWriter

    a, _ = corpus
    job = _job(tmp_path, f"data.sources=[{{path: {a}}}]", "data.on_bad_row=quarantine")
    ref, got, _ = _both(job, tmp_path, "bad")
    writer = WeightsWriter(tmp_path / "run", len(ref.encoded))
    for i in range(len(ref.encoded)):
        writer.put(i, np.ones(3, np.float32))
    steps = ShardSteps(got.shards, got.positions, [[0, 1]], 2, 1, weights=writer.close())
    with pytest.raises(ValueError, match=r"/run: row 0 \(.*\) has 3 weights for \d+ response "
                                         r"tokens: the weights file is not this run's"):
        steps.step(0, 0)


def test_data_shards_dir_places_the_shards_of_train(tmp_path):
    from stardss.commands.train import shard_root
    from stardss.config.fields import ConfigError

    assert shard_root(_job(tmp_path)) == tmp_path / "shards"
    job = _job(tmp_path, f"data.shards_dir={tmp_path}/shared")
    assert job.data.shards_dir == f"{tmp_path}/shared"
    assert shard_root(job) == tmp_path / "shared"
    with pytest.raises((ConfigError, ValueError), match="shards_dir"):
        _job(tmp_path, "data.shards_dir=[a, b]")


def test_weights_writer_reads_back_while_writing_and_leaves_no_file_on_abort(tmp_path):
    """Stream mode reads a row's weights back between writes (later epochs); the finished
    files give the same values, float32; an aborted run leaves neither file."""
    import numpy as np

    from stardss.train.weights import INDEX, VALUES, WeightsWriter

    writer = WeightsWriter(tmp_path, 4)
    writer.put([2, 0], np.array([0.25, 1 / 3], np.float64))  # a row and its copy
    assert writer.has(0) and writer.has(2) and not writer.has(1)
    assert writer.get(0).tolist() == [0.25, float(np.float32(1 / 3))]
    writer.put(3, [0.5])
    assert writer.get(3).tolist() == [0.5] and writer.get(2).tolist() == writer.get(0).tolist()
    with pytest.raises(KeyError, match="row 1 has no weights"):
        writer.get(1)
    assert not (tmp_path / VALUES).exists()  # not in place before close
    done = writer.close()
    assert [None if (w := done.row(i)) is None else w.tolist() for i in range(4)] == \
        [[0.25, float(np.float32(1 / 3))], None, [0.25, float(np.float32(1 / 3))], [0.5]]
    assert done.trains_anything() and len(done) == 4
    aborted = WeightsWriter(tmp_path / "b", 2)
    aborted.put(0, [1.0])
    aborted.abort()
    assert not list((tmp_path / "b").iterdir())
    zero = WeightsWriter(tmp_path / "z", 1)
    zero.put(0, [0.0, 0.0])
    assert not zero.close().trains_anything()  # rs zero_weight on data judged all unsafe
    assert not (tmp_path / f".{INDEX}.tmp.npy").exists()


def test_shards_and_weights_made_under_a_relative_out_dir_open_in_another_cwd(
        tmp_path, corpus, monkeypatch):
    """`make demo` runs with out_dir=runs/demo: a Train worker unpickles the shard set and the
    weights file in a working directory of its own, so what ships must not be relative."""
    import pickle

    import numpy as np

    from stardss.data.shards import ShardSet
    from stardss.train.weights import WeightsWriter, first_copies

    a, _ = corpus
    job = _job("runs/demo", f"data.sources=[{{path: {a}}}]", "data.on_bad_row=quarantine")
    (tmp_path / "job").mkdir()
    monkeypatch.chdir(tmp_path / "job")
    tok = tokenizer()
    with BadRowSink("quarantine", tmp_path / "q.jsonl") as sink:
        got = load_sharded_data(job.data, tok, tok, Path("runs/demo/shards"), sink,
                                seed=job.seed, parallel=False)
    writer = WeightsWriter(Path("runs/demo/dss"), len(got.positions))
    writer.put(0, np.ones(3, np.float32))
    blobs = pickle.dumps(ShardSet(got.shards.folders)), pickle.dumps(
        writer.close(first_copies([str(i) for i in range(len(got.positions))])[1]))
    monkeypatch.chdir(tmp_path)  # the worker's cwd: runs/demo/... is not here
    shards, weights = (pickle.loads(b) for b in blobs)
    assert len(shards.parts) == len(got.shards.parts) and weights.row(0).tolist() == [1, 1, 1]


def _conversations(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    out = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": words(2, 8)},
                         {"role": "assistant", "content": words(1, 12)}]
        out.append(json.dumps({"messages": messages}))
    return out


def test_train_turns_all_shards_give_the_in_memory_rows_steps_and_their_own_folder(tmp_path):
    from stardss.data import shards
    from stardss.data.sources import resolve_kind

    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(_conversations(120)) + "\n")
    job = _job(tmp_path, f"data.sources=[{{path: {path}}}]", "data.train_turns=all",
               "data.max_length=160")
    ref, got, _ = _both(job, tmp_path, "turns", target_bytes=3000)
    assert len(got.shards.parts) > 2
    assert [vars(e) for e in got.encoded] == [vars(e) for e in ref.encoded]
    assert all(e.token_turn is not None for e in ref.encoded)
    counts = got.turn_counts().tolist()
    assert counts == ref.turn_counts().tolist() and {1, 2, 3} <= set(counts)
    plan = plan_steps(len(ref.encoded), 8, 2, seed=5)
    table = TableSteps([train_row(e) for e in ref.encoded], plan, 2, 2, 10)
    shard = ShardSteps(got.shards, got.positions, plan, 2, 2)
    for step in range(len(plan)):
        for rank in (0, 1):
            (want, want_tokens), _ = table.step(step, rank)
            (have, have_tokens), _ = shard.step(step, rank)
            assert have_tokens == want_tokens
            assert [[r and vars(r) for r in mb] for mb in have] == \
                [[r and vars(r) for r in mb] for mb in want]
    # train_turns=last keeps the folder key it always had; all gets a folder of its own
    tok, src = tokenizer(), job.data.sources[0]
    fp = tokenizer_fingerprint(tok)

    def run(**kw):
        return ingest([src], tok, fp, 160, tmp_path / "keys", seed=0, stop_at_bad=False,
                      parallel=False, **kw)[0]

    old_key = shards.source_key({
        "source": {k: v for k, v in vars(src).items() if k != "ratio"},
        "kind": resolve_kind(src), "tokenizer": fp, "max_length": 160,
        "content": shards.content_digest(str(path)), "seed": None})
    last, every = run(), run(train_turns="all")
    assert last.folder.name == old_key and run(train_turns="last").reused
    assert every.folder != last.folder and not every.reused
    assert shards.ShardSet([last.folder]).turn_counts() is None
