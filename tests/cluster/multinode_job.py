"""The driver of the multi-node test, run as its own process: a ``ray.cluster_utils.Cluster`` of two nodes on
this machine (2 CPUs each, its own temp dir and ports) whose workers import a stale ``ftcircuits`` unless a
job ships its own; the storage and MLflow checks; then a small fine-tuning run (``jobs.finetune``) and the
circuits of its checkpoints (``jobs.circuits --run``) on it, and which nodes their actors ran on.

``python multinode_job.py TEMP_DIR OUT_JSON JOBS_JSON`` with ``FTCIRCUITS_STORAGE``,
``MLFLOW_TRACKING_URI`` (an MLflow server) and ``NODES_PYTHONPATH`` (the nodes' PYTHONPATH) set; JOBS_JSON
holds ``{"finetune": [args], "circuits": [args]}``. ``Cluster.shutdown`` stops only its own nodes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from ftcircuits.cluster.connection import ClusterError, check_shared_outputs, connect
from jobs import circuits, finetune
from jobs.local_cluster import free_port


def refusal(path: Path) -> str:
    try:
        check_shared_outputs(path)
    except ClusterError as error:
        return str(error)
    return ""


def storage_refusals(storage: str, uri: str) -> dict[str, str]:
    """Return check_shared_outputs' message without storage, outside it, and with a SQLite store."""
    messages = {}
    os.environ.pop("FTCIRCUITS_STORAGE")
    os.environ.pop("MLFLOW_TRACKING_URI")
    messages["no_storage"] = refusal(Path(storage) / "out")
    os.environ["FTCIRCUITS_STORAGE"] = storage
    messages["outside_storage"] = refusal(Path(storage).parent / "elsewhere")
    messages["sqlite"] = refusal(Path(storage) / "out")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    messages["accepted"] = refusal(Path(storage) / "out")
    return messages


def main(temp_dir: str, result: Path, jobs: dict[str, list[str]]) -> None:
    # the nodes' processes inherit this environment; this driver imported its own ftcircuits already
    os.environ["PYTHONPATH"] = os.environ.pop("NODES_PYTHONPATH")
    head = {"num_cpus": 2, "temp_dir": temp_dir, "gcs_server_port": free_port(), "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": free_port()}  # fmt: skip
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    try:
        cluster.add_node(num_cpus=2, temp_dir=temp_dir)
        os.environ["RAY_ADDRESS"] = cluster.address
        connect()  # joins it, ships the package, checks the workers import it
        nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
        messages = storage_refusals(os.environ["FTCIRCUITS_STORAGE"], os.environ["MLFLOW_TRACKING_URI"])
        finetune.main(jobs["finetune"])
        circuits.main(jobs["circuits"])
        placed: dict[str, set[str]] = {}
        for actor in list_actors(detail=True, limit=10_000, raise_on_missing_output=False):
            if actor.node_id:
                placed.setdefault(actor.class_name, set()).add(actor.node_id)
        result.write_text(json.dumps({"nodes": nodes, "messages": messages,
                                      "placed": {k: sorted(v) for k, v in placed.items()}}))  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))
