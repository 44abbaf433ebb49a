"""The guardrail pool under faults and load: actors killed at random points, a stuck batch,
autoscaling between actors.min and actors.max, actors that cannot be scheduled."""
import json
import logging
import random
import threading
import time

import numpy as np
import pytest
import ray

from stardss.config import ScoringConfig
from stardss.config.schema import ActorsConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.pool import GuardPool, GuardPoolError
from stardss.guard.rules import RuleGuardrail
from tests.integration.pool_support import REDOS, RULES, STUCK, make_requests

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]

GUARDS = [RULES, REDOS]


def scoring(min=2, max=None, num_cpus=0.5, batch_size=4, **kw):
    base = dict(max_in_flight=2, timeout_s=20.0, start_timeout_s=20.0, max_restarts=3,
                progress_timeout_s=30.0, idle_s=0.2)
    return ScoringConfig(actors=ActorsConfig(min=min, max=max or min, num_cpus=num_cpus,
                                             batch_size=batch_size), **{**base, **kw})


def direct(req):
    return np.array([RuleGuardrail(c).score(req.prompt, req.prefixes) for c in GUARDS])


def assert_complete(out, reqs, want):
    """Every key once, in request order; the scores of the keys in `want` exactly equal."""
    assert list(out) == [r.key for r in reqs]
    for key, arr in want.items():
        np.testing.assert_array_equal(out[key], arr)


def test_random_kills_lose_and_duplicate_nothing():
    reqs = make_requests(96, slow_n=17)  # 24 batches of 4, ~50 ms each
    with GuardPool(GUARDS, scoring(max_restarts=6)) as pool:
        want = pool.score(reqs)  # undisturbed
        assert pool.metrics[-1]["restarts"] == 0
        for r in reqs[:10]:
            np.testing.assert_array_equal(want[r.key], direct(r))
        for seed in range(4):
            rng = random.Random(seed)
            at = sorted(rng.sample(range(1, 20), 2))  # kill after these many batches
            finished, kills = [0], []

            def killer(done, total):
                finished[0] += 1
                if at and finished[0] >= at[0]:
                    at.pop(0)
                    victim = rng.randrange(pool.size)
                    kills.append(victim)
                    ray.kill(pool.actors[victim])

            def kill_any():
                actors = pool.actors  # a copy: the pool may be replacing one right now
                if actors:
                    ray.kill(actors[rng.randrange(len(actors))])

            timer = threading.Timer(rng.uniform(0.05, 0.4), kill_any)
            timer.start()
            out = pool.score(reqs, progress=killer)
            timer.join()
            assert_complete(out, reqs, want)
            assert len(kills) == 2, seed
            assert len({m["batch"] for m in pool.metrics}) == len(pool.metrics) == 24
            # up to 3 kills (one may hit an actor already dead or replaced)
            assert 1 <= pool.metrics[-1]["restarts"] <= 3, (seed, pool.metrics[-1])


def test_stuck_batch_retried_until_restarts_run_out():
    reqs = make_requests(40, slow_n=18)
    reqs[13] = ScoreRequest("ex13", "p", STUCK, [len(STUCK)])  # batch 3
    with GuardPool(GUARDS, scoring(timeout_s=1.5, max_restarts=2)) as pool:
        t = time.monotonic()
        with pytest.raises(GuardPoolError, match=r"guard actor \d, batch 3 .*no result within "
                                                 r"1.5s.*2 replacement actors used of "
                                                 r"scoring.max_restarts=2"):
            pool.score(reqs)
        elapsed = time.monotonic() - t
    assert 3 * 1.5 <= elapsed < 15


def test_progress_timeout_names_the_running_batch():
    reqs = make_requests(12, slow_n=18)
    reqs[5] = ScoreRequest("ex5", "p", STUCK, [len(STUCK)])  # batch 1
    with GuardPool(GUARDS, scoring(timeout_s=60, progress_timeout_s=1.5)) as pool:
        t = time.monotonic()
        with pytest.raises(GuardPoolError, match=r"no batch finished for 1.5s.*guard actor \d: "
                                                 r"batch 1 "):
            pool.score(reqs)
    assert time.monotonic() - t < 6


@pytest.mark.parametrize("max_restarts", [0, 1])
def test_actor_killed_before_score(max_restarts):
    reqs = make_requests(40, slow_n=18)
    with GuardPool(GUARDS, scoring(max_restarts=max_restarts)) as pool:
        ray.kill(pool.actors[0])
        if max_restarts == 0:  # the old behaviour: the first death fails the run
            with pytest.raises(GuardPoolError, match=r"guard actor 0, batch \d+ .*killed by "
                                                     r"`ray.kill`.*0 replacement actors used"):
                pool.score(reqs)
        else:
            out = pool.score(reqs)
            assert_complete(out, reqs, {r.key: direct(r) for r in reqs})
            assert pool.metrics[-1]["restarts"] == 1 and pool.size == 2


def _autoscaler_request():
    """The standing request_resources() bundles: the v1 autoscaler's KV entry (a local Ray
    runs without autoscaler v2)."""
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    assert not is_autoscaler_v2()
    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return None if raw is None else json.loads(raw)


def test_pool_grows_to_max_and_shrinks_to_min_asking_the_autoscaler():
    reqs = make_requests(240, slow_n=18)  # 120 batches of 2: ~7 s of work on one actor
    asked = []
    with GuardPool(GUARDS, scoring(min=1, max=3, batch_size=2), autoscaler=True) as pool:
        assert pool.size == 1 and _autoscaler_request() == [{"CPU": 0.5}]
        out = pool.score(reqs, progress=lambda *_: asked.append(len(_autoscaler_request())))
        sizes = [m["actors"] for m in pool.metrics]
        assert max(sizes) == 3 and sizes[0] == 1
        assert max(asked) == 3  # room for every actor it grew to was asked for
        assert pool.size == 1 and _autoscaler_request() == [{"CPU": 0.5}]  # and given back
        m = pool.metrics[-1]
        assert m["rows_per_s"] > 0 and m["restarts"] == 0 and m["latency_s"] > 0
    assert _autoscaler_request() == []  # withdrawn when the pool closes
    assert_complete(out, reqs, {r.key: direct(r) for r in reqs[::8]})


def test_unschedulable_actors_dropped_and_run_completes(caplog):
    reqs = make_requests(160, slow_n=18)
    caplog.set_level(logging.WARNING, logger="stardss.guard.pool")
    # 3 x 0.6 CPUs fit in 2 CPUs, a 4th and 5th never start
    with GuardPool(GUARDS, scoring(min=1, max=5, num_cpus=0.6, batch_size=2)) as pool:
        pool.start_timeout_s = 1.5  # only once started: a busy machine may start slowly
        out = pool.score(reqs)
        assert max(m["actors"] for m in pool.metrics) <= 3
        assert pool.size == 1
    assert_complete(out, reqs, {r.key: direct(r) for r in reqs[::8]})
    assert "not started within 1.5s" in caplog.text and "dropped" in caplog.text
