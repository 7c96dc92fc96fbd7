"""ray_cluster.yaml passes Ray's own validation (offline: no AWS call) and keeps the cluster's rules."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
HEAD = "head"


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def checked(config: dict) -> dict:
    """Return ``config`` as ``ray up`` prepares it (defaults merged), after Ray's validation."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def worker_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_ray_validates_the_cluster_config(cluster):
    prepared = checked(cluster)
    assert prepared["head_node_type"] == HEAD
    assert sorted(prepared["available_node_types"]) == ["gpu-4xa10g", "gpu-4xl40s", "gpu-8xa100-80gb", HEAD]


def _rename(section: Callable[[dict], dict], old: str, new: str) -> Callable[[dict], None]:
    def plant(config: dict) -> None:
        where = section(config)
        where[new] = where.pop(old)

    return plant


TYPOS = {
    "max_worker": _rename(lambda c: c, "max_workers", "max_worker"),
    "availble_node_types": _rename(lambda c: c, "available_node_types", "availble_node_types"),
    "min_worker": _rename(lambda c: c["available_node_types"]["gpu-4xa10g"], "min_workers", "min_worker"),
    "pull_befor_run": _rename(lambda c: c["docker"], "pull_before_run", "pull_befor_run"),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_misspelled_key_is_rejected(cluster, typo):
    TYPOS[typo](cluster)
    with pytest.raises(jsonschema.ValidationError, match=f"'{typo}' was unexpected"):
        checked(cluster)


def test_the_head_runs_no_ray_work(cluster):
    head = checked(cluster)["available_node_types"][HEAD]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert head["max_workers"] == 0


def test_every_gpu_type_scales_from_zero_with_explicit_resources(cluster):
    types = worker_types(cluster)
    assert {name: t["node_config"]["InstanceType"] for name, t in types.items()} == {
        "gpu-4xa10g": "g5.12xlarge",
        "gpu-4xl40s": "g6e.12xlarge",
        "gpu-8xa100-80gb": "p4de.24xlarge",
    }
    for name, node_type in types.items():
        assert node_type["min_workers"] == 0, name
        resources = node_type["resources"]
        assert set(resources) == {"CPU", "GPU", "memory", name}, name
        assert resources[name] == 1 and resources["CPU"] > 0 and resources["memory"] > 0
    assert {name: t["resources"]["GPU"] for name, t in types.items()} == {
        "gpu-4xa10g": 4,
        "gpu-4xl40s": 4,
        "gpu-8xa100-80gb": 8,
    }


def test_the_images_pin_the_installed_ray(cluster):
    docker = cluster["docker"]
    images = {key: docker[key] for key in ("image", "head_image")}
    assert images == {
        "image": f"rayproject/ray:{ray.__version__}-py311-gpu",
        "head_image": f"rayproject/ray:{ray.__version__}-py311-cpu",
    }
    for image in images.values():
        assert image.split(":")[1].split("-")[0] == ray.__version__


def test_every_ray_start_has_token_auth(cluster):
    prepared = checked(cluster)
    starts = [
        command
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for command in prepared[key]
        if "ray start" in command
    ]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in command for command in starts)
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token, on every node


def test_mlflow_runs_on_the_head_and_every_node_knows_where(cluster):
    head, workers = cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]
    server = [command for command in head if "mlflow server" in command]
    assert len(server) == 1
    assert "--host 0.0.0.0 --port 5000" in server[0]
    assert "--artifacts-destination ${FTCIRCUITS_RAY_STORAGE%/ray}/mlartifacts" in server[0]  # on S3
    assert head.index(server[0]) < next(i for i, c in enumerate(head) if "ray start" in c)
    head_start = next(c for c in head if "ray start" in c)
    assert "export MLFLOW_TRACKING_URI=http://$(python -c" in head_start
    assert "export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000;" in next(
        c for c in workers if "ray start" in c
    )
    storage = [o for o in cluster["docker"]["run_options"] if "STORAGE=" in o or "--volume" in o]
    assert storage == [
        "--env FTCIRCUITS_RAY_STORAGE=s3://YOUR-BUCKET/ftcircuits/ray",
        "--env FTCIRCUITS_STORAGE=/mnt/efs/ftcircuits",
        "--volume /mnt/efs:/mnt/efs",
    ]
    (mount,) = cluster["initialization_commands"]  # the shared path, on every node's host
    assert "mount -t nfs4" in mount and "/mnt/efs" in mount


def test_setup_installs_torch_then_the_copied_checkout(cluster):
    assert cluster["file_mounts"]["~/ftcircuits"] == "."
    head, workers = cluster["head_setup_commands"], cluster["worker_setup_commands"]
    assert head[1:] == [
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
        "pip install -e ~/ftcircuits",
    ]
    assert workers == ["pip install torch==2.13.0", "pip install -e ~/ftcircuits"]
