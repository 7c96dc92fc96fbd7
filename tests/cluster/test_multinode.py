"""The whole pipeline on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): outputs on
the shared storage root, MLflow on a server, circuit actors and training workers on both nodes; and the
refusals of a node-local output and of a SQLite store when the cluster has more than one node."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from jobs.local_cluster import start_mlflow, stop_process_group
from tests.conftest import SMALL_CIRCUITS, small_pipeline_args

JOB = Path(__file__).with_name("multinode_job.py")
CIRCUITS = SMALL_CIRCUITS | {"actors": {"count": 2, "cpus": 1}}


@pytest.mark.ray
@pytest.mark.slow
def test_the_pipeline_runs_on_two_nodes_with_shared_storage_and_an_mlflow_server(tmp_path, tiny_run):
    storage = tmp_path / "storage"
    (tmp_path / "mlflow").mkdir()
    storage.mkdir()
    server, uri = start_mlflow(tmp_path / "mlflow")
    temp = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))  # Ray's sockets need a short path
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"FTCIRCUITS_STORAGE": str(storage), "MLFLOW_TRACKING_URI": uri, "RAY_AUTH_TOKEN_PATH": str(token)}
    result = tmp_path / "result.json"
    started = psutil.Process(server.pid).create_time()
    try:
        # two workers of 2 CPUs per run: one on each node
        args = small_pipeline_args(tmp_path, tiny_run / "base", "study", CIRCUITS, workers=2, cpus=2)
        job = subprocess.run([sys.executable, str(JOB), str(temp / "ray"), str(result), *args],
                             env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
        check_outputs(job, result, storage, uri, temp)
    finally:
        stop_process_group(server.pid, started)


def check_outputs(
    job: subprocess.CompletedProcess, result: Path, storage: Path, uri: str, temp: Path
) -> None:
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    seen = json.loads(result.read_text())

    nodes = seen["nodes"]
    assert len(nodes) == 2
    messages = seen["messages"]
    assert (
        "the cluster has 2 nodes" in messages["no_storage"]
        and "set FTCIRCUITS_STORAGE" in messages["no_storage"]
    )
    assert f"under FTCIRCUITS_STORAGE={storage}" in messages["outside_storage"]
    assert messages["sqlite"].startswith("MLflow would be a SQLite file on the driver's disk")
    assert messages["accepted"] == ""

    assert seen["placed"]["CircuitActor"] == nodes  # spread: one actor per node
    assert seen["placed"]["RayTrainWorker"] == nodes  # 2 workers x 2 CPUs: one per node

    study = storage / "study"  # the relative out, under the storage root
    assert (study / "report.html").is_file()
    assert (
        study / "comparison" / "addsub-100" / "lora" / "seed-0" / "checkpoints" / "index.parquet"
    ).is_file()
    assert not (study / "mlflow.db").exists()
    client = MlflowClient(uri)
    experiments = {e.name for e in client.search_experiments()}
    assert {"finetune", "circuits", "analysis", "compare-methods"} <= experiments
    (finetune,) = [e for e in client.search_experiments() if e.name == "finetune"]
    assert {r.info.status for r in client.search_runs([finetune.experiment_id])} == {"FINISHED"}
    leftover = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    assert leftover == []
