"""Jobs on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) whose nodes cannot import
ftcircuits unless a job ships it: outputs on the shared storage root, MLflow on a server, Ray Train workers
and circuit actors on both nodes; and the refusals of a node-local output and of a SQLite store when the
cluster has more than one node. The jobs are the smallest that place work on both nodes: a 3-step
fine-tuning run on two workers of 2 CPUs, and the circuits of its checkpoints on two actors."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.over_run import SUMMARY_FILE
from jobs.local_cluster import start_mlflow, stop_process_group
from tests.conftest import (
    SMALL_RUN_STEPS,
    circuit_settings,
    circuits_of_run_args,
    shipped_package,
    small_finetune_config,
    stale_package,
)

JOB = Path(__file__).with_name("multinode_job.py")
RUN = "run"  # relative: under the storage root
# two workers of 2 CPUs (one per node) and two circuit actors, spread over the nodes
FINETUNE = {"workers": 2, "cpus": 2}
CIRCUITS = circuit_settings(8, 8, robustness=False, curve=False, actors=2, cpus_per_actor=1)


@pytest.mark.ray
@pytest.mark.slow
def test_jobs_run_on_two_nodes_with_shared_storage_and_an_mlflow_server(tmp_path, model_dir):
    storage = tmp_path / "storage"
    (tmp_path / "mlflow").mkdir()
    storage.mkdir()
    server, uri = start_mlflow(tmp_path / "mlflow")
    temp = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))  # Ray's sockets need a short path
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"FTCIRCUITS_STORAGE": str(storage), "MLFLOW_TRACKING_URI": uri, "RAY_AUTH_TOKEN_PATH": str(token),
            "NODES_PYTHONPATH": stale_package(tmp_path)}  # fmt: skip
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(small_finetune_config(str(model_dir), RUN, **FINETUNE)))
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"finetune": ["--config", str(config)],
                                "circuits": circuits_of_run_args(RUN, CIRCUITS)}))  # fmt: skip
    result = tmp_path / "result.json"
    started = psutil.Process(server.pid).create_time()
    try:
        job = subprocess.run([sys.executable, str(JOB), str(temp / "ray"), str(result), str(jobs)],
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

    # the nodes' workers import the package the driver shipped (their own is stale)
    shipped = rf"its workers \(.+?\) from {shipped_package(temp / 'ray')}\n"
    assert re.search(shipped, job.stdout), job.stdout[-3000:]
    assert seen["placed"]["CircuitActor"] == nodes  # spread: one actor per node
    assert seen["placed"]["RayTrainWorker"] == nodes  # 2 workers x 2 CPUs: one per node

    run = storage / RUN  # the relative out, under the storage root
    assert read_checkpoint_index(run)["step"].to_list() == SMALL_RUN_STEPS
    (circuits,) = (run / "circuits").iterdir()
    assert pl.read_parquet(circuits / SUMMARY_FILE)["step"].to_list() == SMALL_RUN_STEPS
    assert not (run / "mlflow.db").exists()
    client = MlflowClient(uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert {"finetune", "circuits"} <= set(experiments)
    for name in ("finetune", "circuits"):
        assert {r.info.status for r in client.search_runs([experiments[name]])} == {"FINISHED"}, name
    leftover = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    assert leftover == []
