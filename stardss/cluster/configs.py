"""Offline checks of the cluster configs under clusters/: Ray cluster-launcher YAMLs (`ray up`)
and KubeRay RayCluster manifests (`kubectl apply`).

Ray validates a launcher YAML only at `ray up`, KubeRay a RayCluster only when the operator
reconciles it, and a GPU node type that advertises neither `trainer` nor `guard` shows up only
as a job waiting forever for resources. These checks catch all three before a launch:

    python -m stardss.cluster.configs clusters/*.yaml
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path

import yaml

# The custom resources stardss jobs ask for, and the job keys that ask for them.
ASKED_BY = {"trainer": "train.resources_per_worker: {trainer: 1}",
            "guard": "scoring.actors.resources: {guard: 1}"}
K8S_GPU = "nvidia.com/gpu"
MAX_REPLICAS = 2**31 - 1  # KubeRay's default maxReplicas

Problem = tuple[str, str]  # (key path, what is wrong)


def check_cluster_config(path) -> list[str]:
    """Problems of the cluster config at `path`, each '<file>: <key path>: <what>'; [] = fine."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: cannot read: {e}"]
    launchers = [d for d in docs if "provider" in d]
    rayclusters = [d for d in docs if "provider" not in d and (
        d.get("kind") == "RayCluster" or str(d.get("apiVersion", "")).startswith("ray.io/"))]
    problems = [p for d in launchers for p in check_launcher(d)]
    problems += [p for d in rayclusters for p in check_kuberay(d)]
    if not launchers and not rayclusters:
        problems.append(("(top level)", "neither a Ray cluster-launcher config (no `provider`) "
                                        "nor a KubeRay RayCluster (`kind: RayCluster`)"))
    return [f"{path}: {key}: {what}" for key, what in problems]


@lru_cache(maxsize=1)
def ray_version() -> str:
    return importlib.metadata.version("ray")


@lru_cache(maxsize=1)
def _launcher_schema():
    """Ray's own schema of `ray up` configs, found without importing ray (slow); jsonschema is
    one of ray's requirements."""
    import jsonschema

    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    return jsonschema.Draft7Validator(
        json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text()))


def check_launcher(cfg: dict) -> list[Problem]:
    """A `ray up` config: Ray's schema, what Ray checks only at launch, then stardss's roles."""
    errors = sorted(_launcher_schema().iter_errors(cfg), key=lambda e: [str(p) for p in e.path])
    problems = [(".".join(map(str, e.absolute_path)) or "(top level)", e.message) for e in errors]
    types = cfg.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return problems + [("available_node_types", "missing: stardss needs node types that "
                                                    "advertise `trainer` and `guard`")]
    if cfg.get("head_node_type") not in types:
        problems.append(("head_node_type", f"{cfg.get('head_node_type')!r} is not one of "
                                           f"available_node_types ({', '.join(types)})"))
    cluster_max, min_sum, advertised = cfg.get("max_workers"), 0, {}
    for name, node in types.items():
        if not isinstance(node, dict):
            continue  # the schema check reported it
        key = f"available_node_types.{name}"
        low, high = node.get("min_workers", 0), node.get("max_workers", cluster_max)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append((f"{key}.min_workers", f"{low} > max_workers {high}"))
        min_sum += low if isinstance(low, int) else 0
        resources = node.get("resources") if isinstance(node.get("resources"), dict) else {}
        gpus = _count(resources.get("GPU", 0)) or 0
        # GCP attaches GPUs in node_config, but Ray schedules on the ones `resources` declares.
        attached = sum(_count(a.get("acceleratorCount", 0)) or 0
                       for a in (node.get("node_config") or {}).get("guestAccelerators") or [])
        if attached and attached != gpus:
            problems.append((f"{key}.resources.GPU",
                             f"{gpus}, but node_config.guestAccelerators attach {attached}"))
        problems += _check_roles(f"{key}.resources", name, max(gpus, attached), resources,
                                 advertised)
        problems += _check_image(f"{key}.docker.worker_image",
                                 (node.get("docker") or {}).get("worker_image"))
    if isinstance(cluster_max, int) and min_sum > cluster_max:
        problems.append(("max_workers", f"{cluster_max} < {min_sum}, the node types' min_workers"))
    for field in ("image", "head_image", "worker_image"):
        problems += _check_image(f"docker.{field}", (cfg.get("docker") or {}).get(field))
    return problems + _check_one_each("available_node_types", advertised)


def check_kuberay(doc: dict) -> list[Problem]:
    """A RayCluster: API version, Ray version, every group, the autoscaler."""
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(("apiVersion", f"{doc.get('apiVersion')!r}, expected 'ray.io/v1'"))
    if doc.get("kind") != "RayCluster":
        problems.append(("kind", f"{doc.get('kind')!r}, expected 'RayCluster'"))
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if str(spec.get("rayVersion")) != ray_version():
        problems.append(("spec.rayVersion",
                         f"{spec.get('rayVersion')!r}, but the installed ray is {ray_version()}"))
    advertised = {}
    problems += _check_group("spec.headGroupSpec", "head", spec.get("headGroupSpec"), advertised)
    workers = spec.get("workerGroupSpecs") or []
    for i, group in enumerate(workers):
        key = f"spec.workerGroupSpecs[{i}]"
        if not isinstance(group, dict):
            problems.append((key, "not a mapping"))
            continue
        problems += _check_group(key, group.get("groupName", f"#{i}"), group, advertised)
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", MAX_REPLICAS)
        replicas = group.get("replicas", low)
        if not all(isinstance(n, int) for n in (low, replicas, high)):
            problems.append((key, "minReplicas, replicas and maxReplicas must be whole numbers"))
        elif low > high:
            problems.append((f"{key}.minReplicas", f"{low} > maxReplicas {high}"))
        elif not low <= replicas <= high:
            problems.append((f"{key}.replicas",
                             f"{replicas} is outside minReplicas {low} .. maxReplicas {high}"))
    scales = any(isinstance(g, dict) and g.get("maxReplicas", MAX_REPLICAS) != g.get(
        "minReplicas", 0) for g in workers)
    if scales and spec.get("enableInTreeAutoscaling") is not True:
        problems.append(("spec.enableInTreeAutoscaling", "must be true: without the autoscaler "
                         "the groups stay at `replicas` and the guardrail pool never gets nodes"))
    return problems + _check_one_each("spec.workerGroupSpecs", advertised)


def _check_group(key: str, name: str, group, advertised: dict) -> list[Problem]:
    """One RayCluster group: start parameters, image, GPUs against what it advertises."""
    if not isinstance(group, dict):
        return [(key, "missing")]
    problems, params = [], group.get("rayStartParams")
    if not isinstance(params, dict):
        problems.append((f"{key}.rayStartParams", "missing (KubeRay before 1.4 requires it; "
                                                  "`{}` is enough)"))
        params = {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        return problems + [(f"{key}.template.spec.containers", "no container to run Ray in")]
    ray_key = f"{key}.template.spec.containers[0]"  # KubeRay runs Ray in the first container
    problems += _check_image(f"{ray_key}.image", containers[0].get("image"))
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    gpus = _count(limits.get(K8S_GPU, 0)) or 0
    if "num-gpus" in params and _count(params["num-gpus"]) != gpus:
        problems.append((f"{key}.rayStartParams.num-gpus", f"{params['num-gpus']}, but "
                         f"{ray_key}.resources.limits.{K8S_GPU} is {gpus}"))
    # Custom resources as Ray's KubeRay autoscaler reads them: the group's `resources` field if
    # set, else rayStartParams.resources, a quoted JSON object '"{\"trainer\": 8}"'.
    if isinstance(group.get("resources"), dict):
        res_key, custom = f"{key}.resources", {k: _count(v) for k, v in group["resources"].items()}
    else:
        res_key, raw = f"{key}.rayStartParams.resources", params.get("resources", '"{}"')
        try:
            custom = json.loads(str(raw)[1:-1].replace("\\", ""))
            assert isinstance(custom, dict)
        except (ValueError, AssertionError):
            problems.append((res_key, f"{raw!r} is not the format Ray parses: "
                                      "'\"{\\\"trainer\\\": 8}\"'"))
            custom = {}
    return problems + _check_roles(res_key, name, gpus, custom, advertised)


def _check_roles(key: str, name: str, gpus: int, resources: dict,
                 advertised: dict) -> list[Problem]:
    """A node type with GPUs advertises `trainer` or `guard` (not both: placement.py keeps the
    two stages apart), one unit per GPU, as jobs ask for one unit per worker / replica."""
    problems, roles = [], [role for role in ASKED_BY if role in resources]
    if len(roles) > 1:
        problems.append((key, f"{name} advertises both `trainer` and `guard`: guardrail actors "
                              f"would share its GPUs with Train workers (placement.py refuses "
                              f"such a node unless scoring.colocate=true)"))
    for role in roles:
        advertised.setdefault(role, []).append(name)
        if gpus and resources[role] != gpus:
            problems.append((key, f"`{role}: {resources[role]}`, but the node has {gpus} GPUs: "
                                  f"advertise one `{role}` per GPU"))
    if gpus and not roles:
        problems.append((key, f"{name} has {gpus} GPUs but advertises neither `trainer` nor "
                              f"`guard`, so no stardss job will use them"))
    return problems


def _check_one_each(key: str, advertised: dict) -> list[Problem]:
    """Exactly one node type per role: jobs name the role, not the node type."""
    return [(key, f"{len(advertised.get(role, []))} node types advertise `{role}` "
                  f"({', '.join(advertised.get(role, [])) or 'none'}); exactly one must, "
                  f"for jobs that set {asked_by}")
            for role, asked_by in ASKED_BY.items() if len(advertised.get(role, [])) != 1]


def _check_image(key: str, image) -> list[Problem]:
    """Ray's own images must carry the installed Ray version (a cluster on another Ray fails at
    submission or half way through). Other images are the user's: their tags are not checked."""
    if not isinstance(image, str) or not image.startswith("rayproject/"):
        return []
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    if tag == ray_version() or tag.startswith(ray_version() + "-"):
        return []
    return [(key, f"{image}: tag {tag!r} is not Ray {ray_version()} (the installed ray)")]


def _count(value):
    """A whole count from YAML or a Kubernetes quantity (8, "8"); None if it is not one."""
    try:
        return int(str(value))
    except ValueError:
        return None


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    problems = [p for path in paths for p in check_cluster_config(path)]
    print("\n".join(problems) if problems else f"{len(paths)} cluster config(s): no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
