import threading
import time

import numpy as np
import pytest
import ray
from omegaconf import OmegaConf

from stardss import raytools
from stardss.config import GuardrailConfig, RuleConfig, ScoringConfig
from stardss.config.schema import ActorsConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.pool import GuardPool, GuardPoolError
from stardss.guard.rules import RuleGuardrail
from tests.integration.pool_support import POISON, REDOS, RULES, STUCK, make_requests

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]

GUARDS = [RULES, POISON]


def scoring(actors=2, num_cpus=0.5, batch_size=8, max_actors=None, **kw):
    """A fixed-size pool of `actors` unless max_actors is given."""
    base = dict(max_in_flight=2, timeout_s=20.0, start_timeout_s=20.0, max_restarts=0)
    return ScoringConfig(actors=ActorsConfig(min=actors, max=max_actors or actors,
                                             num_cpus=num_cpus, batch_size=batch_size),
                         **{**base, **kw})


def slow(req, text):
    """The request under the same key, now a response the REDOS rule is slow on."""
    return ScoreRequest(req.key, req.prompt, text, [len(text)])


def direct(cfgs, req):
    guards = [RuleGuardrail(c) for c in cfgs]
    return np.array([g.score(req.prompt, req.prefixes) for g in guards], dtype=np.float64)


def test_pool_matches_direct_scores_in_request_order(monkeypatch):
    import stardss.guard.pool as pool_mod
    fetched = []  # batches in the order their results were fetched

    def spy_get(ref, *, timeout_s, what):
        fetched.append(what)
        return raytools.get(ref, timeout_s=timeout_s, what=what)

    monkeypatch.setattr(pool_mod, "get", spy_get)
    reqs = make_requests(200)
    # An early slow request: batch 0 finishes after later batches on the other actor.
    reqs[0] = slow(reqs[0], "a" * 19 + "!")
    cfgs = GUARDS + [REDOS]
    calls = []
    with GuardPool(cfgs, scoring()) as pool:
        assert pool.size == 2
        out = pool.score(reqs, progress=lambda done, total: calls.append((done, total)))
    assert list(out) == [r.key for r in reqs]
    assert {len(r.prefixes) for r in reqs} >= {0, 1, 2, 5}
    for r in reqs:
        want = direct(cfgs, r)
        assert out[r.key].shape == (3, len(r.prefixes)) and out[r.key].dtype == np.float64
        np.testing.assert_array_equal(out[r.key], want)
    assert calls[-1] == (200, 200)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) == 25  # one call per batch
    batches = [int(w.split("batch ")[1].split()[0]) for w in fetched if "batch" in w]
    assert sorted(batches) == list(range(25)) and batches != sorted(batches)


def test_pool_accepts_omegaconf_configs_and_empty_input():
    guards = OmegaConf.create([OmegaConf.structured(g) for g in GUARDS])
    sc = OmegaConf.structured(scoring(actors=1))
    with GuardPool(guards, sc) as pool:
        assert pool.score([]) == {}
        req = make_requests(3)
        out = pool.score(req)
    np.testing.assert_array_equal(out["ex1"], direct(GUARDS, req[1]))


def _thread_niceness(actor) -> list[int]:
    import os

    def read(_self):
        # /proc/self/task/<tid>/stat: field 19 (after the ")" that ends the name) is nice.
        return [int(open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[16])
                for t in os.listdir("/proc/self/task")]

    return ray.get(actor.__ray_call__.remote(read), timeout=20)


def test_nice_actors_score_the_same_at_lower_priority():
    sc = scoring(actors=1)
    sc.actors.nice = 7
    req = make_requests(3)
    with GuardPool(GUARDS, sc) as pool:
        out = pool.score(req)
        niceness = _thread_niceness(pool.actors[0])
        assert pool.nodes == {0: ray.get_runtime_context().get_node_id()}
    # Every thread, Ray's own ones too (Ray runs one of them at 15 already: left as it is).
    assert len(niceness) > 1 and min(niceness) == 7
    np.testing.assert_array_equal(out["ex2"], direct(GUARDS, req[2]))
    with GuardPool(GUARDS, scoring(actors=1)) as pool:
        assert min(_thread_niceness(pool.actors[0])) == 0


def test_duplicate_keys_rejected():
    with GuardPool(GUARDS, scoring(actors=1)) as pool:
        reqs = make_requests(3) + make_requests(1)
        with pytest.raises(ValueError, match="duplicate request keys.*ex0"):
            pool.score(reqs)


def test_actor_killed_before_score():
    with GuardPool(GUARDS, scoring()) as pool:
        ray.kill(pool.actors[0])
        t = time.monotonic()
        with pytest.raises(GuardPoolError,
                           match=r"guard actor 0, batch \d+ .*killed by `ray.kill`"):
            pool.score(make_requests(100))
        assert time.monotonic() - t < 5


def test_actor_killed_during_score():
    killed = []

    def kill_on_first(done, total):
        if not killed:
            killed.append(done)
            ray.kill(pool.actors[1])

    with GuardPool(GUARDS, scoring(batch_size=2)) as pool:
        t = time.monotonic()
        with pytest.raises(GuardPoolError, match=r"guard actor 1, batch \d+"):
            pool.score(make_requests(200), progress=kill_on_first)
        assert killed and time.monotonic() - t < 5


def test_actor_killed_from_another_thread():
    with GuardPool(GUARDS + [REDOS], scoring(batch_size=1, timeout_s=20)) as pool:
        reqs = make_requests(40)
        # ~80 ms each: the run lasts long enough to be interrupted
        reqs = [slow(r, "a" * 21 + "!") for r in reqs]
        threading.Timer(0.3, ray.kill, args=(pool.actors[0],)).start()
        t = time.monotonic()
        with pytest.raises(GuardPoolError, match="guard actor 0"):
            pool.score(reqs)
        assert time.monotonic() - t < 5


def test_stuck_actor_times_out_naming_actor_and_batch():
    reqs = make_requests(60)
    reqs[13] = slow(reqs[13], STUCK)  # batch 3 with batch_size 4
    with GuardPool(GUARDS + [REDOS], scoring(batch_size=4)) as pool:
        # Short timeout only once started: a worker process can take > 2 s to start on a busy
        # 2-core machine.
        pool.timeout_s = 2.0
        t = time.monotonic()
        with pytest.raises(GuardPoolError, match=r"guard actor \d, batch 3 .*no result within 2s"):
            pool.score(reqs)
        elapsed = time.monotonic() - t
    assert 1.9 < elapsed < 4


def test_bad_rule_fails_at_start_with_the_cause():
    bad = GuardrailConfig(rules=[RuleConfig(pattern="(oops", weight=1.0)])
    with pytest.raises(GuardPoolError, match=r"guard actor 0 start.*rule 0: bad pattern '\(oops'"):
        GuardPool([bad], scoring())


def test_unschedulable_actor_fails_within_timeout():
    t = time.monotonic()
    with pytest.raises(GuardPoolError, match="not started within 1s"):
        GuardPool(GUARDS, scoring(num_cpus=3, start_timeout_s=1.0))
    assert time.monotonic() - t < 3


def test_raytools_alive_and_errors():
    with GuardPool(GUARDS, scoring(actors=1)) as pool:
        actor = pool.actors[0]
        assert raytools.actor_alive(actor)
        with pytest.raises(raytools.RemoteError, match="bad call: AttributeError") as info:
            raytools.get(actor.score_batch.remote([1]), timeout_s=10, what="bad call")
        assert isinstance(info.value.__cause__, ray.exceptions.RayTaskError)
        ray.kill(actor)
        # ray.kill is asynchronous: the actor may answer one more probe.
        deadline = time.monotonic() + 3
        while raytools.actor_alive(actor) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not raytools.actor_alive(actor)
        with pytest.raises(raytools.RemoteError, match="dead call: ActorDiedError"):
            raytools.get(actor.score_batch.remote([]), timeout_s=10, what="dead call")


def test_stream_reads_requests_lazily_and_yields_every_key_once():
    reqs = make_requests(200, seed=3)
    read = [0]

    def source():
        for r in reqs:
            read[0] += 1
            yield r

    with GuardPool(GUARDS, scoring(actors=2, batch_size=4)) as pool:
        expected = pool.score(reqs)
        stream = pool.stream(source())
        first_key, first = next(stream)
        # queued (actors.max * max_in_flight batches) + in flight (as many): never the input
        assert read[0] <= 2 * (2 * 2 * 4) + 4
        rest = dict(stream)
    assert read[0] == 200 and first_key not in rest and len(rest) == 199
    rest[first_key] = first
    assert all(np.array_equal(rest[k], v) for k, v in expected.items())

