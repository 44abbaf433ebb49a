"""The cluster configs under clusters/ pass their checks, and broken copies of them fail naming
the key that is wrong."""
import copy
from pathlib import Path

import pytest
import yaml

from stardss.cluster.configs import check_cluster_config, main, ray_version

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"
SHIPPED = sorted(CLUSTERS.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def problems_of(tmp_path, name: str, edit) -> list[str]:
    """Problems of clusters/<name> after `edit` changed a deep copy of it."""
    config = copy.deepcopy(load(name))
    edit(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return check_cluster_config(path)


def names(problems: list[str], key: str, *words: str) -> bool:
    """Some problem is about `key` (its full key path) and says all of `words`."""
    return any(f": {key}: " in p and all(w in p for w in words) for p in problems)


def group(config: dict, name: str) -> dict:
    return next(g for g in config["spec"]["workerGroupSpecs"] if g["groupName"] == name)


def test_the_three_configs_are_shipped():
    assert {"aws.yaml", "gcp.yaml", "kuberay.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_passes(path):
    assert check_cluster_config(path) == []


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_advertises_each_role_on_one_gpu_node_type(name):
    types = load(name)["available_node_types"]
    for role, node_type in (("trainer", "gpu_train"), ("guard", "gpu_guard")):
        assert [t for t, node in types.items() if role in node["resources"]] == [node_type]
        assert types[node_type]["resources"][role] == types[node_type]["resources"]["GPU"]
    assert types["gpu_guard"]["min_workers"] == 0
    assert types[load(name)["head_node_type"]]["resources"]["CPU"] > 0


def test_missing_head_node_type_fails(tmp_path):
    def edit(c):
        del c["available_node_types"][c["head_node_type"]]
    assert names(problems_of(tmp_path, "aws.yaml", edit), "head_node_type", "'head'")


def test_min_workers_above_max_workers_fails(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_guard"]["min_workers"] = 5
    problems = problems_of(tmp_path, "gcp.yaml", edit)
    assert names(problems, "available_node_types.gpu_guard.min_workers", "5 > max_workers 4")


def test_min_workers_summing_above_cluster_max_workers_fails(tmp_path):
    def edit(c):
        c["max_workers"] = 1
        c["available_node_types"]["cpu_worker"]["min_workers"] = 2
    assert names(problems_of(tmp_path, "aws.yaml", edit), "max_workers", "1 < 2")


def test_gpu_node_type_without_guard_resource_fails(tmp_path):
    def edit(c):
        del c["available_node_types"]["gpu_guard"]["resources"]["guard"]
    problems = problems_of(tmp_path, "aws.yaml", edit)
    assert names(problems, "available_node_types.gpu_guard.resources", "neither")
    assert names(problems, "available_node_types", "0 node types advertise `guard`")


def test_two_node_types_advertising_trainer_fail(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_train_b"] = copy.deepcopy(
            c["available_node_types"]["gpu_train"])
        c["max_workers"] += 2
    problems = problems_of(tmp_path, "gcp.yaml", edit)
    assert names(problems, "available_node_types", "2 node types advertise `trainer`",
                 "gpu_train, gpu_train_b")


def test_node_type_advertising_trainer_and_guard_fails(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_train"]["resources"]["guard"] = 8
        del c["available_node_types"]["gpu_guard"]
    problems = problems_of(tmp_path, "aws.yaml", edit)
    assert names(problems, "available_node_types.gpu_train.resources", "both")


def test_role_resource_must_count_the_gpus(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_train"]["resources"]["trainer"] = 1
    problems = problems_of(tmp_path, "aws.yaml", edit)
    assert names(problems, "available_node_types.gpu_train.resources", "`trainer: 1`",
                 "8 GPUs")


def test_gcp_accelerators_must_match_the_gpu_resource(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_train"]["node_config"]["guestAccelerators"][0][
            "acceleratorCount"] = 4
    problems = problems_of(tmp_path, "gcp.yaml", edit)
    assert names(problems, "available_node_types.gpu_train.resources.GPU", "attach 4")


def test_launcher_schema_errors_name_the_key(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_guard"]["resources"]["guard"] = "one"
        c["available_node_types"]["cpu_worker"]["min_worker"] = 1  # typo of min_workers
    problems = problems_of(tmp_path, "aws.yaml", edit)
    assert names(problems, "available_node_types.gpu_guard.resources.guard", "'one'")
    assert names(problems, "available_node_types.cpu_worker", "min_worker")


def test_launcher_docker_image_of_another_ray_fails(tmp_path):
    def edit(c):
        c["docker"]["image"] = "rayproject/ray:2.9.0-py311-gpu"
    assert names(problems_of(tmp_path, "aws.yaml", edit), "docker.image", "2.9.0")


def test_wrong_ray_version_fails(tmp_path):
    def edit(c):
        c["spec"]["rayVersion"] = "2.9.0"
    problems = problems_of(tmp_path, "kuberay.yaml", edit)
    assert names(problems, "spec.rayVersion", "'2.9.0'", ray_version())


def test_kuberay_image_of_another_ray_fails(tmp_path):
    def edit(c):
        group(c, "gpu-guard")["template"]["spec"]["containers"][0]["image"] = \
            "rayproject/ray:2.59.0-py311-gpu"
    assert names(problems_of(tmp_path, "kuberay.yaml", edit),
                 "spec.workerGroupSpecs[2].template.spec.containers[0].image", "2.59.0")


def test_gpu_limit_differing_from_advertised_gpus_fails(tmp_path):
    def edit(c):
        group(c, "gpu-train")["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"] = 4
    problems = problems_of(tmp_path, "kuberay.yaml", edit)
    assert names(problems, "spec.workerGroupSpecs[1].rayStartParams.num-gpus", "8", "is 4")
    assert names(problems, "spec.workerGroupSpecs[1].rayStartParams.resources",
                 "`trainer: 8`", "4 GPUs")


def test_kuberay_gpu_group_without_guard_fails(tmp_path):
    def edit(c):
        del group(c, "gpu-guard")["rayStartParams"]["resources"]
    problems = problems_of(tmp_path, "kuberay.yaml", edit)
    assert names(problems, "spec.workerGroupSpecs[2].rayStartParams.resources", "neither")
    assert names(problems, "spec.workerGroupSpecs", "0 node types advertise `guard`")


def test_unparseable_custom_resources_fail(tmp_path):
    def edit(c):
        group(c, "gpu-guard")["rayStartParams"]["resources"] = "{guard: 1}"
    assert names(problems_of(tmp_path, "kuberay.yaml", edit),
                 "spec.workerGroupSpecs[2].rayStartParams.resources", "format")


def test_group_without_ray_start_params_fails(tmp_path):
    def edit(c):
        del group(c, "cpu-worker")["rayStartParams"]
    assert names(problems_of(tmp_path, "kuberay.yaml", edit),
                 "spec.workerGroupSpecs[0].rayStartParams", "missing")


@pytest.mark.parametrize("low,replicas,high,key", [
    (3, 3, 2, "minReplicas"), (0, 5, 4, "replicas"), (1, 0, 4, "replicas")])
def test_replicas_outside_their_range_fail(tmp_path, low, replicas, high, key):
    def edit(c):
        group(c, "gpu-guard").update(minReplicas=low, replicas=replicas, maxReplicas=high)
    assert names(problems_of(tmp_path, "kuberay.yaml", edit),
                 f"spec.workerGroupSpecs[2].{key}")


def test_autoscaling_groups_need_the_autoscaler(tmp_path):
    def edit(c):
        c["spec"]["enableInTreeAutoscaling"] = False
    assert names(problems_of(tmp_path, "kuberay.yaml", edit), "spec.enableInTreeAutoscaling")


def test_wrong_api_version_fails(tmp_path):
    def edit(c):
        c["apiVersion"] = "ray.io/v1alpha1"
    assert names(problems_of(tmp_path, "kuberay.yaml", edit), "apiVersion", "v1alpha1")


def test_other_yaml_is_not_a_cluster_config(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\ntrain: {lr: 1.0e-4}\n")
    assert names(check_cluster_config(path), "(top level)", "neither")


def test_main_exit_status(tmp_path, capsys):
    broken = tmp_path / "kuberay.yaml"
    broken.write_text((CLUSTERS / "kuberay.yaml").read_text().replace(
        'rayVersion: "2.60.0"', 'rayVersion: "0.0.1"'))
    assert main([str(p) for p in SHIPPED]) == 0
    assert main([str(broken)]) == 1
    assert "spec.rayVersion" in capsys.readouterr().out
