"""A multi-node Ray cluster on this machine (Ray's own `cluster_utils.Cluster`: one raylet per
node): custom resources stand in for the cluster configs' GPU training nodes (`trainer`) and
guardrail nodes (`guard`), and a streamed dss run must put its Train workers and guardrail
actors where the job's resources say, and finish."""
import pytest
import ray
from ray.cluster_utils import Cluster

from stardss.cluster.placement import PlacementError, check_placement
from stardss.cluster.resources import init_ray
from stardss.commands.train import run_train
from stardss.config import derive
from tests.helpers import make_job

STEPS = 3


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {"train_a": c.add_node(num_cpus=2, resources={"trainer": 2}),
             "train_b": c.add_node(num_cpus=2, resources={"trainer": 2}),
             "guard": c.add_node(num_cpus=3, resources={"guard": 2})}
    c.wait_for_nodes()
    yield c, {name: node.node_id for name, node in nodes.items()}
    ray.shutdown()
    c.shutdown()


def _job(root, base_model, address, *overrides):
    return make_job(root, base_model, "star.cache=false", f"train.max_steps={STEPS}",
                    "train.micro_batch_size=4", "train.cpus_per_worker=1",
                    "scoring.actors.batch_size=4", f"ray.address={address}", *overrides)


def _check(job):
    check_placement(job.train, job.scoring, uses_guardrails=True)


def test_workers_and_guard_actors_land_where_the_job_says(cluster, base_model, tmp_path):
    c, node_ids = cluster
    job = _job(tmp_path, base_model, c.address,
               "train.resources_per_worker={trainer: 1}", "train.placement_strategy=PACK",
               "scoring.actors.min=1", "scoring.actors.max=2", "scoring.actors.num_cpus=0.5",
               "scoring.actors.resources={guard: 1}", "scoring.mode=stream")
    init_ray(job.ray, job.train)
    summary = run_train(job, out_dir=str(tmp_path / "run"))
    assert summary["steps"] == STEPS
    workers = summary["worker_nodes"]
    # PACK: both ranks on one training node (each has room for two), none anywhere else.
    assert len(workers) == 2 and workers[0] == workers[1]
    assert workers[0] in (node_ids["train_a"], node_ids["train_b"])
    assert summary["star"]["guard_nodes"] == [node_ids["guard"]]


def test_spread_puts_one_rank_on_each_training_node(cluster, base_model, tmp_path):
    c, node_ids = cluster
    job = _job(tmp_path, base_model, c.address, "train.resources_per_worker={trainer: 1}",
               "train.placement_strategy=STRICT_SPREAD", "scoring.actors.resources={guard: 1}",
               "scoring.actors.num_cpus=0.5", "loss.kind=sft")
    init_ray(job.ray, job.train)
    summary = run_train(job, out_dir=str(tmp_path / "run"))
    assert sorted(summary["worker_nodes"]) == sorted([node_ids["train_a"], node_ids["train_b"]])


def test_colocation_needs_separate_resources_or_colocate_true(cluster, base_model, tmp_path):
    c, _ = cluster
    job = _job(tmp_path, base_model, c.address)
    init_ray(job.ray, job.train)
    job = _job(tmp_path, base_model, c.address, "train.resources_per_worker={trainer: 1}")
    with pytest.raises(PlacementError, match=r"scoring\.actors\.resources: empty"):
        run_train(job)
    job = _job(tmp_path, base_model, c.address, "train.resources_per_worker={trainer: 1}",
               "scoring.actors.resources={guard: 1}")
    _check(job)  # the live cluster keeps them apart
    # A node that advertises both would let guardrail actors share it with Train workers.
    both = c.add_node(num_cpus=1, resources={"trainer": 1, "guard": 1})
    c.wait_for_nodes()
    try:
        with pytest.raises(PlacementError, match=f"node {both.node_id[:12]}.*trainer.*guard"):
            _check(job)
        _check(derive(job, {"scoring.colocate": True}))
    finally:
        c.remove_node(both)
