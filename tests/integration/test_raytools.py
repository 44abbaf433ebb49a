"""The actor-group lifecycle under the guardrail pool and the reference group: a bounded start
(all actors at once), health, replace, close; and what a failed start says."""
import os
import time

import pytest
import ray

from stardss.raytools import ActorGroup, RemoteError, get

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]


@ray.remote
class Echo:
    def __init__(self, tag: str, fail: bool = False):
        if fail:
            raise ValueError(f"cannot load {tag}")
        self.tag = tag

    def threads(self) -> tuple[str, str, str]:
        return self.tag, os.environ["OMP_NUM_THREADS"], os.environ["RAYON_NUM_THREADS"]


def _dies(group, member, within_s=10.0) -> bool:
    """ray.kill is asynchronous: the probe may answer for a moment after it returns."""
    deadline = time.monotonic() + within_s
    while group.alive(member, timeout_s=5):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_start_health_replace_close():
    group = ActorGroup(Echo, ("e",), num_cpus=0.5, start_timeout_s=30, what="echo actor")
    try:
        members = group.start(2)
        assert [m.number for m in members] == [0, 1] and group.starting == []
        # Each actor's thread pools are capped at the CPUs it reserves (at least one).
        assert get([m.actor.threads.remote() for m in members], timeout_s=10, what="t") == \
            [("e", "1", "1")] * 2
        assert all(group.alive(m) for m in members)
        ray.kill(members[0].actor, no_restart=True)
        assert _dies(group, members[0])
        st = group.replace(members[0], "it died")
        new = group.wait_started()
        assert [m.number for m in new] == [2] and st.why == "it died"
        assert [m.number for m in group.members] == [1, 2]
    finally:
        group.close()
    assert group.members == [] and _dies(group, members[1])


def test_a_start_that_cannot_finish_names_the_actor_and_the_hint():
    group = ActorGroup(Echo, ("e",), num_cpus=8, start_timeout_s=1.0, what="echo actor")
    with pytest.raises(RemoteError, match=r"echo actor 0 not started within 1s: no room"):
        group.start(1, hint="no room for 8 CPUs")
    group.close()
    failing = ActorGroup(Echo, ("model.bin", True), num_cpus=0.5, start_timeout_s=30,
                         what="echo actor")
    with pytest.raises(RemoteError, match=r"echo actor 0 start: .*cannot load model.bin"):
        failing.start(1)
    assert failing.starting == [] and failing.members == []
    failing.close()
