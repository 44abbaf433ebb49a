"""The content-addressed STAR cache: keys, exact invalidation, Parquet round trips, concurrency."""
import multiprocessing as mp
import os

import numpy as np
import pytest

from stardss.star.cache import (
    StarCache,
    chunk_fingerprint,
    split_cached,
    split_rows,
    store_scored,
    text_hash,
)
from stardss.star.chunk import word_cuts

G1, G2 = "llama_guard_3_1b@rev1|tmpl:abc|safe/unsafe", "granite_guardian_3.1_2b@rev9|harm|No/Yes"
CH = chunk_fingerprint("words", 5)


def rows():
    texts = {
        "a": ("How do I bake bread?", "Mix flour, water, salt and yeast. Knead, rise, bake."),
        "b": ("東京について教えて 😀", "東京は日本の首都です。 naïve café — ½ Ω ∑\n\n\tend"),
        "c": ("prompt with <tags> & \"quotes\"", ""),
        "d": ("ab", "c"),
        "e": ("a", "bc"),
    }
    return {k: (p, r, word_cuts(r, 5)) for k, (p, r) in texts.items()}


def fake_scores(n_guards, cuts, seed):
    rng = np.random.default_rng(seed)
    s = rng.random((n_guards, len(cuts)))
    s[0, 0] = np.nextafter(0.0, 1.0)  # subnormal, must survive exactly
    if s.shape[1] > 1:
        s[-1, -1] = 1.0 - 2.0 ** -52
    return s


def items(data, ids=None):
    return [(k, p, r) for k, (p, r, _) in data.items() if ids is None or k in ids]


def score_all(cache, guards, chunk_fp, data, seed=0):
    scored = {k: (p, r, c, fake_scores(len(guards), c, seed + i))
              for i, (k, (p, r, c)) in enumerate(sorted(data.items()))}
    store_scored(cache, guards, chunk_fp, scored)
    return scored


def test_key_is_length_prefixed_and_depends_on_every_field():
    k = StarCache.key
    assert k(G1, CH, "ab", "c") != k(G1, CH, "a", "bc")
    assert text_hash("ab", "c") != text_hash("a", "bc")
    base = k(G1, CH, "p", "r")
    assert base == k(G1, CH, "p", "r")
    assert len({base, k(G2, CH, "p", "r"), k(G1, chunk_fingerprint("words", 3), "p", "r"),
                k(G1, CH, "p2", "r"), k(G1, CH, "p", "r2"), k(G1 + "x", CH, "p", "r")}) == 6
    assert k(G1, CH, "東京", "😀") != k(G1, CH, "東京", "😀 ")


def test_chunk_fingerprint():
    assert chunk_fingerprint("words", 5) != chunk_fingerprint("words", 4)
    assert chunk_fingerprint("tokens", 5, "tokA") != chunk_fingerprint("tokens", 5, "tokB")
    assert chunk_fingerprint("full", 0) == "full"
    with pytest.raises(ValueError):
        chunk_fingerprint("tokens", 5)
    with pytest.raises(ValueError):
        chunk_fingerprint("lines", 5)


def test_round_trip_exact_across_reopen(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        scored = score_all(cache, [G1, G2], CH, data)
        assert len(cache) == 2 * len(data) and cache.pending == 2 * len(data)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert not list(tmp_path.glob(".*tmp"))
    cache = StarCache(tmp_path)
    assert len(cache) == 2 * len(data)
    served, todo = split_cached(cache, [G1, G2], CH, items(data))
    assert todo == []
    for k, (p, r, cuts, s) in scored.items():
        got_cuts, got = served[k]
        assert got_cuts == cuts
        assert got.dtype == np.float64 and got.shape == (2, len(cuts))
        assert np.array_equal(got, s)  # bit-exact float64
    assert served["c"][0] == [0]  # empty response: one prefix, the empty string
    assert cache.stats.hits == 2 * len(data) and cache.stats.misses == 0


def test_get_returns_copies_and_miss_counts(tmp_path):
    cache = StarCache(tmp_path)
    key = cache.key(G1, CH, "p", "r r")
    assert cache.get(key) is None and cache.stats.misses == 1
    cache.put(key, [1, 3], [0.25, 0.5], guard_fp=G1, chunk_fp=CH)
    cuts, s = cache.get(key)
    cuts.append(99)
    s[0] = 7.0
    assert cache.get(key)[0] == [1, 3] and cache.get(key)[1].tolist() == [0.25, 0.5]
    assert cache.stats.hits == 3


def test_put_validates(tmp_path):
    cache = StarCache(tmp_path)
    kw = dict(guard_fp=G1, chunk_fp=CH)
    with pytest.raises(ValueError):
        cache.put("k", [1, 2], [0.5], **kw)
    with pytest.raises(ValueError):
        cache.put("k", [], [], **kw)
    with pytest.raises(ValueError):
        cache.put("k", [2, 2], [0.5, 0.5], **kw)
    with pytest.raises(ValueError):
        cache.put("k", [1, 2], [0.5, float("nan")], **kw)
    with pytest.raises(ValueError):
        store_scored(cache, [G1, G2], CH, {"x": ("p", "abc", [3], np.ones((1, 1)))})
    with pytest.raises(ValueError):
        store_scored(cache, [G1], CH, {"x": ("p", "abc", [2], np.ones((1, 1)))})
    assert len(cache) == 0


def test_identical_put_writes_nothing(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        score_all(cache, [G1], CH, data)
    with StarCache(tmp_path) as cache:
        assert score_all(cache, [G1], CH, data) is not None
        assert cache.pending == 0 and cache.stats.stored == 0
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert StarCache(tmp_path).flush() is None


def test_guardrail_change_invalidates_only_its_entries(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        score_all(cache, [G1, G2], CH, data)
    cache = StarCache(tmp_path)
    g2_new = G2.replace("harm", "harm|template-v2")
    served, todo = split_cached(cache, [G1, g2_new], CH, items(data))
    assert served == {} and todo == list(data)
    # G1's entries are untouched: alone it serves every row
    served, todo = split_cached(cache, [G1], CH, items(data))
    assert todo == [] and set(served) == set(data)


def test_chunk_config_change_invalidates(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        score_all(cache, [G1], CH, data)
    cache = StarCache(tmp_path)
    for fp in (chunk_fingerprint("words", 3), chunk_fingerprint("tokens", 5, "tok")):
        served, todo = split_cached(cache, [G1], fp, items(data))
        assert served == {} and todo == list(data)
    served, todo = split_cached(cache, [G1], CH, items(data))
    assert todo == []


def test_editing_one_response_invalidates_only_that_row(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        score_all(cache, [G1, G2], CH, data)
    edited = dict(data)
    p, r, _ = edited["b"]
    edited["b"] = (p, r + " more", word_cuts(r + " more", 5))
    cache = StarCache(tmp_path)
    served, todo = split_cached(cache, [G1, G2], CH, items(edited))
    assert todo == ["b"] and set(served) == set(data) - {"b"}
    # and a prompt edit, too
    edited["a"] = ("How do I bake rye bread?",) + data["a"][1:]
    served, todo = split_cached(cache, [G1, G2], CH, items(edited))
    assert todo == ["a", "b"]


def test_second_guardrail_reuses_first(tmp_path):
    data = rows()
    with StarCache(tmp_path) as cache:
        first = score_all(cache, [G1], CH, data)
    cache = StarCache(tmp_path)
    served, todo = split_cached(cache, [G1, G2], CH, items(data))
    assert served == {} and todo == list(data)
    assert cache.stats.hits == len(data)  # every G1 entry was found
    # the pool rescores both guardrails; G1's identical scores are not written again
    both = {k: (p, r, c, np.vstack([first[k][3], fake_scores(1, c, 100 + i)]))
            for i, (k, (p, r, c)) in enumerate(data.items())}
    assert store_scored(cache, [G1, G2], CH, both) == len(data)
    served, todo = split_cached(cache, [G1, G2], CH, items(data))
    assert todo == [] and all(np.array_equal(served[k][1], both[k][3]) for k in data)


def test_expected_cuts_guard_and_cut_mismatch_between_guards(tmp_path):
    cache = StarCache(tmp_path)
    p, r = "p", "one two three four five six"
    store_scored(cache, [G1], CH, {"x": (p, r, [9, len(r)], [[0.9, 0.8]])})
    served, todo = split_cached(cache, [G1], CH, [("x", p, r, [9, len(r)])])
    assert todo == [] and served["x"][0] == [9, len(r)]
    served, todo = split_cached(cache, [G1], CH, [("x", p, r, [len(r)])])
    assert todo == ["x"]
    # a second guardrail stored with other cuts under the same chunk fingerprint: not served
    store_scored(cache, [G2], CH, {"x": (p, r, [len(r)], [[0.5]])})
    served, todo = split_cached(cache, [G1, G2], CH, [("x", p, r)])
    assert todo == ["x"]


def test_later_part_wins_and_duplicate_rows(tmp_path):
    key = StarCache.key(G1, CH, "p", "r")
    with StarCache(tmp_path) as c:
        c.put(key, [1], [0.25], guard_fp=G1, chunk_fp=CH)
    with StarCache(tmp_path) as c:
        c.put(key, [1], [0.75], guard_fp=G1, chunk_fp=CH)
    c = StarCache(tmp_path)
    assert c.stats.parts == 2 and len(c) == 1 and c.get(key)[1].tolist() == [0.75]
    served, todo = split_cached(c, [G1], CH, [("a", "p", "q"), ("a", "p", "q")])
    assert todo == ["a"]


def test_compact(tmp_path):
    data = rows()
    for i, k in enumerate(data):
        with StarCache(tmp_path) as c:
            score_all(c, [G1], CH, {k: data[k]}, seed=i)
    assert len(list(tmp_path.glob("part-*.parquet"))) == len(data)
    c = StarCache(tmp_path)
    before = {k: c.get(c.key(G1, CH, p, r)) for k, (p, r, _) in data.items()}
    c.compact()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    c2 = StarCache(tmp_path)
    for k, (p, r, _) in data.items():
        cuts, s = c2.get(c2.key(G1, CH, p, r))
        assert cuts == before[k][0] and np.array_equal(s, before[k][1])


def test_corrupt_part_is_skipped_with_warning(tmp_path):
    with StarCache(tmp_path) as c:
        score_all(c, [G1], CH, rows())
    (tmp_path / "part-99999999999999999999-1-bad.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="unreadable"):
        c = StarCache(tmp_path)
    assert len(c) == len(rows())


def test_flush_every(tmp_path):
    data = rows()
    c = StarCache(tmp_path, flush_every=2)
    score_all(c, [G1], CH, data)
    assert len(list(tmp_path.glob("part-*.parquet"))) == len(data) // 2
    assert len(StarCache(tmp_path)) == len(data) // 2 * 2


def _writer(root, worker, n):
    with StarCache(root) as c:
        for i in range(n):
            p, r = f"prompt {worker}-{i}", f"response {i} ü 😀"
            c.put(c.key(G1, CH, p, r), [len(r)], [worker / 10 + i / 1000], guard_fp=G1,
                  chunk_fp=CH)
            if i % 10 == 9:
                c.flush()


def test_concurrent_writers(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    c = StarCache(tmp_path)
    assert len(c) == 160 and c.stats.parts == 16
    for w in range(4):
        for i in range(40):
            p, r = f"prompt {w}-{i}", f"response {i} ü 😀"
            assert c.get(c.key(G1, CH, p, r))[1].tolist() == [w / 10 + i / 1000]


def test_refresh_picks_up_other_writers(tmp_path):
    reader = StarCache(tmp_path)
    _writer(str(tmp_path), 1, 5)
    assert len(reader) == 0
    assert reader.refresh() == 5 and len(reader) == 5
    assert reader.refresh() == 0


def test_context_manager_flushes_after_an_exception(tmp_path):
    key = StarCache.key(G1, CH, "p", "r")
    with pytest.raises(RuntimeError):
        with StarCache(tmp_path) as c:
            c.put(key, [1], [0.5], guard_fp=G1, chunk_fp=CH)
            raise RuntimeError("scoring died")
    assert StarCache(tmp_path).get(key)[1].tolist() == [0.5]


def test_tokenizer_fingerprint_tracks_tokenizer_and_template():
    from stardss.star.cache import tokenizer_fingerprint
    from tests.helpers import tokenizer

    tok = tokenizer()
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(tok) and fp.startswith("tok-sha256:")
    old = tok.chat_template
    try:
        tok.chat_template = old + " "
        assert tokenizer_fingerprint(tok) != fp
    finally:
        tok.chat_template = old
    assert chunk_fingerprint("tokens", 5, fp) != chunk_fingerprint("tokens", 5, "other")


def _reference_split(cache, guards, chunk_fp, items):
    """The lookup one row and one guardrail at a time through `get` (the pre-index
    algorithm), to hold the vectorised split_rows against."""
    served, todo, seen = {}, [], set()
    for row_id, p, r, want in items:
        if row_id in seen:
            continue
        seen.add(row_id)
        got = []
        for fp in guards:
            hit = cache.get(cache.key(fp, chunk_fp, p, r))
            if hit is None or hit[0] != want:
                got = None
                break
            got.append(hit[1])
        if got is None:
            todo.append(row_id)
        else:
            served[row_id] = (want, np.stack(got))
    return served, todo


def test_vectorised_split_equals_one_row_at_a_time(tmp_path, monkeypatch):
    import stardss.star.cache_rows as cache_mod

    monkeypatch.setattr(cache_mod, "_LOOKUP_BATCH", 7)  # several batches, one cut short
    rng = np.random.default_rng(3)
    data = {}
    for i in range(60):
        r = " ".join(["w"] * (3 + i % 9)) + f" {i} ü"
        data[f"r{i}"] = (f"prompt {i}", r, word_cuts(r, 2))
    with StarCache(tmp_path, flush_every=9) as c:  # several parts, later parts overwrite
        score_all(c, [G1, G2], CH, data, seed=1)
        score_all(c, [G1], CH, {k: data[k] for k in list(data)[:20]}, seed=2)
    items = []
    for i, (k, (p, r, cuts)) in enumerate(data.items()):
        kind = i % 5
        if kind == 1:  # one cut moved
            cuts = cuts[:-2] + [cuts[-2] - 1, cuts[-1]] if len(cuts) > 1 else [cuts[0] + 1]
        elif kind == 2:  # a cut more
            cuts = [0] + cuts if cuts[0] > 0 else cuts + [cuts[-1] + 1]
        elif kind == 3:  # the second guardrail never scored this text
            p = p + " (edited)"
        items.append((k, p, r, cuts))
    items.append(items[0])  # a repeated row: once
    items.insert(5, (f"new{rng.integers(1000)}", "unseen", "text", [4]))
    a, b = StarCache(tmp_path), StarCache(tmp_path)
    split = split_rows(a, [G1, G2], CH, items)
    want_served, want_todo = _reference_split(b, [G1, G2], CH, items)
    assert split.todo == want_todo and split.served == list(want_served)
    assert 10 < len(split.served) < 50 and len(split.todo) > 10
    for row_id, cuts, scores in split.entries():
        assert cuts == want_served[row_id][0]
        assert np.array_equal(scores, want_served[row_id][1]) and scores.shape[0] == 2
    assert (a.stats.hits, a.stats.misses) == (b.stats.hits, b.stats.misses)


def test_pending_puts_are_served_beside_flushed_ones(tmp_path):
    data = rows()
    with StarCache(tmp_path) as c:
        score_all(c, [G1], CH, {k: data[k] for k in "ab"})
    c = StarCache(tmp_path)
    scored = score_all(c, [G1], CH, {k: data[k] for k in "cde"}, seed=5)  # pending, unflushed
    split = split_rows(c, [G1], CH, [(k, p, r, cuts) for k, (p, r, cuts) in data.items()])
    assert split.served == list("abcde") and split.todo == []
    got = {k: (cuts, s) for k, cuts, s in split.entries()}
    for k in "cde":
        assert got[k][0] == scored[k][2] and np.array_equal(got[k][1], scored[k][3])


def test_a_key_must_be_a_digest(tmp_path):
    c = StarCache(tmp_path)
    with pytest.raises(ValueError, match="sha256 hex digest"):
        c.put("k", [1], [0.5], guard_fp=G1, chunk_fp=CH)
    with pytest.raises(ValueError, match="sha256 hex digest"):
        c.get("A" * 64)


def test_a_part_with_bad_keys_is_skipped_with_one_line_naming_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stardss.star.cache import SCHEMA

    with StarCache(tmp_path) as c:
        score_all(c, [G1], CH, rows())
    bad = tmp_path / "part-99999999999999999999-1-badkeys.parquet"
    table = pq.read_table(next(tmp_path.glob("part-*.parquet")), schema=SCHEMA)
    keys = table.column("key").to_pylist()
    pq.write_table(table.set_column(0, "key", pa.array(["x" + k[1:] for k in keys])), bad)
    with pytest.warns(UserWarning) as caught:
        c = StarCache(tmp_path)
    (w,) = [str(x.message) for x in caught]
    assert str(bad) in w and "sha256" in w and "\n" not in w
    assert len(c) == len(rows())


def test_a_streaming_run_merges_its_parts_and_each_flush_is_on_disk(tmp_path):
    """One flush per step (stream mode): MERGE_PARTS parts of one level merge into one, the
    merged part in place before its sources go, and the newest value of a key wins."""
    import pyarrow.parquet as pq

    from stardss.star.cache import MERGE_PARTS, SCHEMA

    key = StarCache.key(G1, CH, "p", "same row every step")
    c = StarCache(tmp_path)
    steps = 2 * MERGE_PARTS + 5
    for step in range(steps):
        k = StarCache.key(G1, CH, "p", f"row {step}")
        c.put(k, [1, 4], [0.5, step / 1000], guard_fp=G1, chunk_fp=CH)
        c.put(key, [2], [step / 1000], guard_fp=G1, chunk_fp=CH)
        c.flush()
        if step in (0, MERGE_PARTS - 1, MERGE_PARTS, steps - 1):
            fresh = StarCache(tmp_path)  # what a resumed run would see
            cuts, scores = fresh.get(k)
            assert cuts == [1, 4] and scores.tolist() == [0.5, step / 1000]
            assert fresh.get(key)[1].tolist() == [step / 1000]
    assert len(c.part_files()) == 2 + 5  # two merged parts and the last five steps'
    merged = pq.read_table(c.part_files()[0], schema=SCHEMA)  # inspection columns kept
    assert merged.num_rows == MERGE_PARTS + 1 and set(merged.column("guard_fp").to_pylist()) == {G1}
    again = StarCache(tmp_path)
    assert len(again) == steps + 1 and again.get(key)[1].tolist() == [(steps - 1) / 1000]
    assert not list(tmp_path.glob(".*tmp"))


def test_a_put_after_its_own_flush_is_compared_with_the_newest_entry(tmp_path):
    key = StarCache.key(G1, CH, "p", "r")
    c = StarCache(tmp_path)
    for value in (0.25, 0.75):
        assert c.put(key, [1], [value], guard_fp=G1, chunk_fp=CH)
        c.flush()
        assert c.get(key)[1].tolist() == [value]  # the index now covers the flush
    c.put(key, [1], [0.9], guard_fp=G1, chunk_fp=CH)
    c.flush()  # not indexed yet: the put below must not match the older 0.75 and stop
    assert c.put(key, [1], [0.75], guard_fp=G1, chunk_fp=CH)
    c.flush()
    assert c.get(key)[1].tolist() == [0.75] and StarCache(tmp_path).get(key)[1].tolist() == [0.75]
    assert not c.put(key, [1], [0.75], guard_fp=G1, chunk_fp=CH)  # identical: nothing to write


def test_keys_are_those_caches_written_before_hold():
    """The faster key paths hash exactly what hashing.hash_fields does: an existing cache
    keeps matching (the digest below is the pre-index implementation's)."""
    from stardss.hashing import hash_fields as _hash_fields
    from stardss.star.cache_store import row_keys

    want = "b103b6fc3ab3c3a3637379352111d376e6d4583a7c1626913e4ff02c959b321e"
    assert StarCache.key("g|1", "words:5", "東京 😀", "resp\n") == want
    assert text_hash("東京 😀", "resp\n") == _hash_fields("東京 😀", "resp\n")
    ths = [text_hash("東京 😀", "resp\n"), text_hash("", "")]
    assert row_keys(["g|1", G2], "words:5", ths) == [
        StarCache.key(g, "words:5", p, r) for p, r in [("東京 😀", "resp\n"), ("", "")]
        for g in ("g|1", G2)]


def test_a_turns_entry_is_keyed_by_the_conversation_before_it(tmp_path):
    """data.train_turns=all: the same (prompt, response) after another conversation is another
    entry; with no context the key is the single exchange's, as it always was."""
    cache = StarCache(tmp_path)
    p, r = "And the code?", "It is 7-3-9-1, keep it."
    cuts = word_cuts(r, 5)
    before = ({"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."})
    other = ({"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."})
    store_scored(cache, [G1], CH, {"t": (p, r, cuts, [[0.25] * len(cuts)], before)})
    served, todo = split_cached(cache, [G1], CH, [("t", p, r, cuts, before)])
    assert list(served) == ["t"] and served["t"][1].tolist() == [[0.25] * len(cuts)]
    for ctx in (other, ()):
        assert split_cached(cache, [G1], CH, [("t", p, r, cuts, ctx)]) == ({}, ["t"])
    assert split_cached(cache, [G1], CH, [("t", p, r, cuts)]) == ({}, ["t"])
    store_scored(cache, [G1], CH, {"s": (p, r, cuts, [[0.5] * len(cuts)])})  # no context
    assert StarCache.key(G1, CH, p, r) in cache and len(cache) == 2
    served, _ = split_cached(cache, [G1], CH, [("s", p, r, cuts, ())])
    assert served["s"][1].tolist() == [[0.5] * len(cuts)]
