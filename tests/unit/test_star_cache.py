"""The content-addressed STAR cache: keys, exact invalidation, Parquet round trips, concurrency."""
import multiprocessing as mp
import os

import numpy as np
import pytest

from stardss.star.cache import StarCache, chunk_fingerprint, split_cached, store_scored, text_hash
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
