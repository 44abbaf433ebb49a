"""Where a run's Train workers and guardrail actors may go on a multi-node Ray cluster.

Ray places by resources: Train workers reserve `train.resources_per_worker` (e.g. {trainer: 1})
in one placement group of `train.placement_strategy` (PACK: as few nodes as possible), and
guardrail actors reserve `scoring.actors.resources` (e.g. {guard: 1}). Custom resources that
only one kind of node advertises are what keeps the two stages apart: checked here, against
the live cluster's nodes, before anything starts, so a config that would colocate them fails
naming the node instead of quietly sharing its GPUs.
"""
from __future__ import annotations

from typing import Optional

from ..config.schema import ScoringConfig, TrainConfig
from ..errors import UserError


class PlacementError(UserError, ValueError):
    """The cluster's nodes or the job's resources do not allow the placement the job asks for."""


def check_placement(train: TrainConfig, scoring: ScoringConfig, uses_guardrails: bool,
                    nodes: Optional[list[dict]] = None) -> None:
    """scoring.colocate=false on a cluster: both stages must name a custom resource, and no
    alive node may advertise both. `uses_guardrails`: the loss kind starts guardrail actors
    (sft and kl_only do not: nothing to keep apart). `nodes`: ray.nodes() (read when None).
    Call it on a cluster only."""
    if scoring.colocate or not uses_guardrails:
        return
    # Only custom resources can be here: validation refuses CPU, GPU and memory keys.
    train_keys = set(train.resources_per_worker)
    guard_keys = set(scoring.actors.resources)
    for key, keys, example in (("train.resources_per_worker", train_keys, "trainer"),
                               ("scoring.actors.resources", guard_keys, "guard")):
        if not keys:
            raise PlacementError(
                f"{key}: empty, so on a cluster nothing keeps Train workers and guardrail "
                f"actors on different nodes (scoring.colocate=false). Name a custom resource "
                f"only those nodes advertise (clusters/ configs: {{{example}: 1}}), or set "
                f"scoring.colocate=true")
    if nodes is None:
        import ray

        nodes = ray.nodes()
    for node in nodes:
        if not node.get("Alive"):
            continue
        has = set(node.get("Resources", {}))
        if has & train_keys and has & guard_keys:
            raise PlacementError(
                f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}) advertises "
                f"{', '.join(sorted(has & train_keys))} (train.resources_per_worker) and "
                f"{', '.join(sorted(has & guard_keys))} (scoring.actors.resources): guardrail "
                f"actors could share it with Train workers; give the node one of them, or set "
                f"scoring.colocate=true")
