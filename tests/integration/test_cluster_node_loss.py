"""Losing a node, the step feed, or random processes during a streamed dss run, on a
multi-node Ray cluster on this machine (Ray's own `cluster_utils.Cluster`, custom resources
`trainer` / `guard` standing in for training and guardrail nodes, as test_cluster_placement.py).

Every run trains the same plan (6 steps of 8 rows, resumable checkpoints every 2 steps,
train.max_failures=1) with 2 Train workers packed on one training node and 2 rule-guardrail
actors: the undisturbed run (`reference`, once per module) is what every disturbed run must
equal. That can be exact: a rule guardrail scores a row the same whatever batch it is in (a
requeued batch is the same requests), the ranks' micro-batches come from the plan, and a
restarted worker group restores the fp32 weights and Adam state of a checkpoint exactly.
"""
import json
import os
import random
import re
import signal
import threading
import time

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from safetensors.torch import load_file

from stardss.cluster.resources import init_ray
from stardss.commands.train import run_train
from stardss.train import feed as feed_module
from stardss.train.stream import StepProducer
from tests.helpers import make_job
from tests.integration.pool_support import capture_pool, registered_checkpoints, train_worker_pids

STEPS, EVERY = 6, 2
NODE = {"trainer": dict(num_cpus=2, resources={"trainer": 2}),
        "guard": dict(num_cpus=1, resources={"guard": 2})}


class Topology:
    """The cluster and its nodes by kind; tests add and remove nodes to get what they need."""

    def __init__(self):
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        self.nodes: dict[str, list] = {"trainer": [], "guard": []}

    def ensure(self, kind: str, n: int) -> None:
        while len(self.nodes[kind]) < n:
            self.nodes[kind].append(self.cluster.add_node(**NODE[kind]))
        while len(self.nodes[kind]) > n:
            self.remove(self.nodes[kind][-1])
        self.cluster.wait_for_nodes()

    def remove(self, node) -> None:
        for nodes in self.nodes.values():
            if node in nodes:
                nodes.remove(node)
        self.cluster.remove_node(node)

    def by_id(self, node_id: str):
        return next(n for nodes in self.nodes.values() for n in nodes if n.node_id == node_id)


@pytest.fixture(scope="module")
def topology():
    topo = Topology()
    topo.ensure("trainer", 2)
    topo.ensure("guard", 2)
    yield topo
    ray.shutdown()
    topo.cluster.shutdown()


def _job(root, base_model, topo, *overrides):
    job = make_job(root, base_model, "star.cache=false", f"train.max_steps={STEPS}",
                   "train.micro_batch_size=4", "train.cpus_per_worker=1",
                   "train.resources_per_worker={trainer: 1}", "train.placement_strategy=PACK",
                   f"train.checkpoint_every={EVERY}", "train.max_failures=1",
                   "scoring.mode=stream", "scoring.prefetch_steps=1",
                   "scoring.actors.batch_size=4", "scoring.actors.num_cpus=0.5",
                   "scoring.actors.resources={guard: 1}", "scoring.max_restarts=10",
                   f"ray.address={topo.cluster.address}", *overrides)
    init_ray(job.ray, job.train)
    return job


def _log(summary) -> list:
    with open(f"{summary['model_dir']}/stardss_train_log.json") as f:
        return json.load(f)["steps"]


def _assert_same_run(out, ref, run_dir, ref_dir):
    """The disturbed run equals the undisturbed one: steps, data order (tokens per step),
    losses, every row scored once with the same trajectory, the weights bit for bit."""
    got, want = _log(out), _log(ref)
    assert [s["step"] for s in got] == list(range(1, STEPS + 1))
    assert [s["tokens"] for s in got] == [s["tokens"] for s in want]
    assert [s["loss"] for s in got] == [s["loss"] for s in want]
    assert out["rows_trained"] == ref["rows_trained"] == STEPS * 8
    ids = [json.loads(line)["id"] for line in (run_dir / "star.jsonl").read_text().splitlines()]
    assert out["star"]["scored"] == len(ids) == len(set(ids))  # 0 lost, 0 duplicated
    assert (run_dir / "star.jsonl").read_text() == (ref_dir / "star.jsonl").read_text()
    a = load_file(f"{out['model_dir']}/model.safetensors")
    b = load_file(f"{ref['model_dir']}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def _restarts(run_dir) -> int:
    return max(json.loads(line)["restarts"] for line in open(run_dir / "pool_metrics.jsonl"))


@pytest.fixture(scope="module")
def reference(topology, base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("undisturbed")
    summary = run_train(_job(root, base_model, topology), out_dir=str(root / "run"))
    assert summary["steps"] == STEPS
    return summary, root / "run"


def _background(body, state: dict) -> None:
    """Run `body(state)` in a daemon thread; its exception lands in state["error"]."""
    def run():
        try:
            body(state)
        except BaseException as err:  # reported by the test, not lost in the thread
            state["error"] = err

    threading.Thread(target=run, daemon=True).start()


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def hold_after_first_checkpoint(monkeypatch) -> threading.Event:
    """The STAR producer hands training no step after the one following the first checkpoint
    until the returned event is set (or 120 s pass): a disturbance that waits for that
    checkpoint then lands mid-run however fast the steps go (CI once saw a worker killed only
    after the final report, so the run had nothing to resume)."""
    released, real = threading.Event(), StepProducer._put

    def _put(self, step, rows, tokens):
        if step > EVERY:
            released.wait(120)
        return real(self, step, rows, tokens)

    monkeypatch.setattr(StepProducer, "_put", _put)
    return released


def _train_group_node() -> str:
    """The node of the running Train worker group (its PACKed placement group)."""
    for pg in ray.util.placement_group_table().values():
        if pg["state"] == "CREATED" and any("trainer" in b for b in pg["bundles"].values()):
            (node,) = set(pg["bundles_to_node_id"].values())
            return node
    raise LookupError("no Train worker placement group")


def test_guard_node_lost_mid_stream_the_pool_moves_and_trains_the_same_weights(
        topology, reference, base_model, tmp_path, monkeypatch):
    ref, ref_dir = reference
    topology.ensure("guard", 2)
    lost: dict = {}

    def remove_guard_node(pool):
        def body(state):
            _wait(lambda: len(pool.metrics) >= 2, 300, "first step scored")  # mid-stream
            state["node"] = pool.nodes[0]
            topology.remove(topology.by_id(state["node"]))
        _background(body, lost)

    capture_pool(monkeypatch, remove_guard_node)
    out = run_train(_job(tmp_path, base_model, topology), out_dir=str(tmp_path / "run"))
    assert "error" not in lost and lost.get("node")
    assert lost["node"] in out["star"]["guard_nodes"] and len(out["star"]["guard_nodes"]) == 2
    assert _restarts(tmp_path / "run") >= 1  # its actors died with it and were replaced
    _assert_same_run(out, ref, tmp_path / "run", ref_dir)


def _remove_train_node_after_first_checkpoint(topology, storage, state: dict,
                                              monkeypatch) -> None:
    released = hold_after_first_checkpoint(monkeypatch)

    def body(state):
        _wait(lambda: registered_checkpoints(storage), 300, "first checkpoint")
        state["node"] = _train_group_node()
        state["at"] = time.monotonic()
        topology.remove(topology.by_id(state["node"]))
        released.set()
    _background(body, state)


def test_training_node_lost_with_a_spare_resumes_from_its_checkpoint(
        topology, reference, base_model, tmp_path, monkeypatch):
    ref, ref_dir = reference
    topology.ensure("trainer", 2)  # the workers pack on one, the other is spare
    lost: dict = {}
    _remove_train_node_after_first_checkpoint(topology, tmp_path / "run" / "ray_train", lost,
                                              monkeypatch)
    out = run_train(_job(tmp_path, base_model, topology), out_dir=str(tmp_path / "run"))
    assert "error" not in lost and lost.get("node")
    assert lost["node"] not in out["worker_nodes"]  # restarted on the spare
    with open(f"{out['model_dir']}/stardss_train_log.json") as f:
        resumed = json.load(f)["metrics"]["resumed_from"]
    assert resumed and resumed[0] % EVERY == 0  # at a checkpoint
    _assert_same_run(out, ref, tmp_path / "run", ref_dir)


def test_training_node_lost_without_a_spare_fails_in_bounded_time_naming_it(
        topology, reference, base_model, tmp_path, monkeypatch):
    topology.ensure("trainer", 1)
    lost: dict = {}
    _remove_train_node_after_first_checkpoint(topology, tmp_path / "run" / "ray_train", lost,
                                              monkeypatch)
    with pytest.raises(RuntimeError) as failed:
        run_train(_job(tmp_path, base_model, topology, "train.start_timeout_s=10"),
                  out_dir=str(tmp_path / "run"))
    took = time.monotonic() - lost["at"]
    msg = str(failed.value)
    assert "\n" not in msg
    assert re.fullmatch(
        r"dss: Ray Train could not restart its 2 workers within 10s "
        r"\(train.start_timeout_s; tried 2 times, train.max_failures=1\) "
        rf"after node {lost['node'][:12]} \([\d.]+; CPU: 2, trainer: 2\) died: the live "
        r"nodes hold 0 of 2 x \{CPU: 1, trainer: 1\} \(train.cpus_per_worker, "
        r"train.resources_per_worker\)", msg), msg
    # two start timeouts (the restart and its retry) and Ray Train's teardown, never a hang
    assert took < 2 * 10 + 60, took


def test_killed_step_feed_fails_the_run_in_bounded_time_naming_it(
        topology, base_model, tmp_path, monkeypatch):
    topology.ensure("trainer", 1)
    topology.ensure("guard", 1)
    feeds, killed = [], {}
    real = feed_module.StepFeed

    class Spy:  # stream_train makes its feed with StepFeed.options(...).remote: keep it
        def __init__(self, **options):
            self.options_ = options

        @classmethod
        def options(cls, **options):
            return cls(**options)

        def remote(self, *args, **kwargs):
            feeds.append(real.options(**self.options_).remote(*args, **kwargs))
            return feeds[-1]

    monkeypatch.setattr(feed_module, "StepFeed", Spy)
    released = hold_after_first_checkpoint(monkeypatch)

    def body(state):
        _wait(lambda: registered_checkpoints(tmp_path / "run" / "ray_train"), 300,
              "first checkpoint")
        state["at"] = time.monotonic()
        ray.kill(feeds[0])
        released.set()
    _background(body, killed)
    with pytest.raises(RuntimeError, match=r"step feed actor.*(ActorDiedError|died)"):
        run_train(_job(tmp_path, base_model, topology), out_dir=str(tmp_path / "run"))
    assert "error" not in killed and time.monotonic() - killed["at"] < 120


class ChaosKiller:
    """Ray's release chaos tests' killer, for a streamed run: every `every_s` (jittered by the
    seed) it kills a random guard actor of the run's pool not killed yet, `n_guard` times, and
    SIGKILLs one random Train worker once a resumable checkpoint is registered and every ready
    guard actor is dead (training holds after that checkpoint until then). So the batches left
    after the hold meet dead actors whatever the timing: CI once saw (seed 11) every kill land
    on the one actor the last batches were not sent to, and the pool had nothing to replace."""

    def __init__(self, monkeypatch, storage, seed: int, every_s: float = 1.0, n_guard: int = 3):
        self.rng, self.storage, self.every_s, self.n_guard = random.Random(seed), storage, \
            every_s, n_guard
        self.guard_kills, self.worker_killed, self.done = 0, False, threading.Event()
        self.state: dict = {}
        self.released = hold_after_first_checkpoint(monkeypatch)
        capture_pool(monkeypatch, lambda pool: _background(lambda s: self._loop(pool), self.state))

    def _loop(self, pool) -> None:
        killed: list = []
        while not self.done.wait(self.every_s * (0.5 + self.rng.random())):
            alive = [a for a in pool.actors if not any(a is k for k in killed)]
            if self.guard_kills < self.n_guard and alive:
                victim = alive.pop(self.rng.randrange(len(alive)))
                ray.kill(victim)
                killed.append(victim)
                self.guard_kills += 1
            if not self.worker_killed and not alive and registered_checkpoints(self.storage):
                pids = train_worker_pids()
                if pids:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.worker_killed = True
                    self.released.set()
            if self.worker_killed and self.guard_kills >= self.n_guard:
                return


@pytest.mark.parametrize("seed", [3, 11])
def test_chaos_guard_actors_and_a_train_worker_killed_change_nothing(
        topology, reference, base_model, tmp_path, monkeypatch, seed):
    ref, ref_dir = reference
    topology.ensure("trainer", 1)
    topology.ensure("guard", 1)
    killer = ChaosKiller(monkeypatch, tmp_path / "run" / "ray_train", seed)
    try:
        out = run_train(_job(tmp_path, base_model, topology), out_dir=str(tmp_path / "run"))
    finally:
        killer.done.set()
    assert "error" not in killer.state
    # How many guard kills land before the worker's depends on the pool's size then (it scales
    # between 1 and 2 actors): the worker dies once every ready actor is dead, and a run can
    # finish before the killer's next tick (CI, seed 11: 2 kills, then done).
    assert killer.worker_killed and 1 <= killer.guard_kills <= killer.n_guard
    assert _restarts(tmp_path / "run") >= 1  # the kills hit actors the stream still needed
    with open(f"{out['model_dir']}/stardss_train_log.json") as f:
        assert json.load(f)["metrics"]["resumed_from"]  # the worker group restarted
    _assert_same_run(out, ref, tmp_path / "run", ref_dir)
