"""star.jsonl written as records arrive (StarWriter): data order, repeats once, nothing held."""
import json
import random
import weakref

import pytest

from stardss.star.score import StarRecord, StarWriter, write_star


def _record(i: int) -> StarRecord:
    response = f"answer {i} — naïve 😀 " * (1 + i % 3)
    cuts = [len(response) // 2, len(response)]
    return StarRecord(f"toy/{i}", f"prompt {i}", response, cuts,
                      [[0.5 + i / 1000, 0.25], [0.75, 1.0 - 2.0 ** -52]], [0.5, 0.25])


def test_lines_in_data_order_as_write_star_writes_them(tmp_path):
    ids = [f"toy/{i}" for i in range(50)]
    data = ids[:30] + ids[5:10] + ids[30:]  # a mixture that repeats rows 5-9
    arrived = list(range(50))
    random.Random(0).shuffle(arrived)  # the pool's batches finish in any order
    with StarWriter(tmp_path / "star.jsonl", data) as w:
        for i in arrived:
            w.add(_record(i))
            w.add(_record(i))  # a second copy is ignored
    write_star([_record(int(k.split("/")[1])) for k in data], str(tmp_path / "want.jsonl"))
    assert (tmp_path / "star.jsonl").read_bytes() == (tmp_path / "want.jsonl").read_bytes()
    assert [json.loads(x)["id"] for x in open(tmp_path / "star.jsonl")] == ids
    assert w.written == 50 and not w.spool.exists()


def test_holds_no_record_and_spools_each_as_it_arrives(tmp_path):
    """The proof that `stardss score` streams: when the last record is handed over, every
    earlier one is already in the spool file and none is alive any more."""
    n = 200
    alive: list[weakref.ref] = []
    path = tmp_path / "star.jsonl"
    writer = StarWriter(path, [f"toy/{i}" for i in range(n)])

    def records():
        for i in reversed(range(n)):  # the reverse of data order: nothing can go out early
            assert sum(r() is not None for r in alive) <= 1  # only the one being written
            writer._file.flush()
            assert writer.spool.read_bytes().count(b"\n") == n - 1 - i
            r = _record(i)
            alive.append(weakref.ref(r))
            yield r

    with writer:
        for record in records():
            writer.add(record)
        del record
        assert all(r() is None for r in alive) and not path.exists()
    assert [json.loads(x)["id"] for x in open(path)] == [f"toy/{i}" for i in range(n)]


def test_an_error_leaves_no_file(tmp_path):
    path = tmp_path / "star.jsonl"
    with pytest.raises(RuntimeError):
        with StarWriter(path, ["toy/1"]) as w:
            w.add(_record(1))
            raise RuntimeError("the pool died")
    assert list(tmp_path.iterdir()) == []


def test_a_record_outside_the_data_is_refused(tmp_path):
    with StarWriter(tmp_path / "star.jsonl", ["toy/1"]) as w:
        with pytest.raises(ValueError, match="'toy/2'.*not in the data"):
            w.add(_record(2))
        w.add(_record(1))
    assert len((tmp_path / "star.jsonl").read_text().splitlines()) == 1


def test_rows_never_scored_are_left_out(tmp_path):
    with StarWriter(tmp_path / "star.jsonl", ["toy/1", "toy/2", "toy/3"]) as w:
        w.add(_record(3))
        w.add(_record(1))
    assert [json.loads(x)["id"] for x in open(tmp_path / "star.jsonl")] == ["toy/1", "toy/3"]


def test_a_conversation_is_one_line_per_turn_in_data_order(tmp_path):
    from stardss.star.turns import ConversationRecord, turn_key

    def conv(i: int) -> ConversationRecord:
        turns = [_record(3 * i + k) for k in range(3)]
        for k, t in enumerate(turns):
            t.id = turn_key(f"c{i}", k)
        return ConversationRecord(f"c{i}", turns)

    with StarWriter(tmp_path / "star.jsonl", ["c1", "c0", "c1"]) as w:
        w.add(conv(0))
        w.add(conv(1))
    lines = [json.loads(x) for x in open(tmp_path / "star.jsonl")]
    assert [(x["id"], x["row"], x["turn"]) for x in lines] == [
        (f"c{i}#turn{k}", f"c{i}", k) for i in (1, 0) for k in range(3)]
    assert {k for k in lines[0]} == {"id", "prompt", "response", "cuts", "scores",
                                     "trajectory", "row", "turn"}
    write_star([conv(1), conv(0)], str(tmp_path / "want.jsonl"))
    assert (tmp_path / "star.jsonl").read_bytes() == (tmp_path / "want.jsonl").read_bytes()
    assert conv(0).n_prefixes == 6 and conv(0).full_response_safe == 0.25
