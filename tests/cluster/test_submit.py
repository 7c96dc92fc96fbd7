"""Jobs on a cluster they join: ``ray job submit`` to a local head (``jobs.local_cluster``), a driver joining
by address, and one with no address, which starts its own Ray.

The head's nodes have a stale ``ftcircuits`` first on their PYTHONPATH, so a job runs only if its code
travels with it. The submitted jobs are the smallest that use each part: a 3-step fine-tuning run (Ray
Train, the storage root, the head's MLflow server) and the circuits of its checkpoints (circuit actors);
the whole pipeline runs once in the suite, in tests/jobs/test_pipeline.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil
import pytest
import requests
import yaml

import ftcircuits
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.over_run import SUMMARY_FILE
from jobs.local_cluster import STATE_FILE, down, main, read_state, up
from tests.conftest import (
    RAY_ENVIRONMENT,
    SMALL_RUN_STEPS,
    STALE_PACKAGE_ERROR,
    SubmissionCluster,
    circuit_settings,
    circuits_of_run_args,
    shipped_package,
    small_finetune_config,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RUN = "runs/submitted-tiny"  # relative: under the storage root
TINY_SUBMITTED = small_finetune_config("tiny", RUN)  # one worker: 3 steps of 16 items
# 8 pairs, no robustness or faithfulness curves: one circuit per checkpoint, on one actor
CIRCUITS = circuit_settings(8, 8, robustness=False, curve=False, actors=1, cpus_per_actor=1)


@dataclass(frozen=True)
class Submission:
    job_id: str
    result: subprocess.CompletedProcess
    storage: Path  # its FTCIRCUITS_STORAGE
    config: Path


@pytest.fixture(scope="module")
def submitted_finetune(tmp_path_factory, submission_cluster) -> Submission:
    """jobs.finetune of TINY_SUBMITTED, submitted once: the first test checks it, the circuits job reads
    its run."""
    root = tmp_path_factory.mktemp("submitted")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_SUBMITTED))
    job_id = f"ftc-finetune-{secrets.token_hex(4)}"
    # FTCIRCUITS_STORAGE travels in the runtime environment's env_vars (the submitting shell's own
    # environment never reaches the driver); it overrides the head's default, <state>/../cluster-storage
    env_vars = {"FTCIRCUITS_STORAGE": str(root / "storage")}
    result = submission_cluster.submit("jobs.finetune", ["--config", str(config)], env_vars, job_id)
    return Submission(job_id, result, root / "storage", config)


def shipped_lines(cluster: SubmissionCluster, job_id: str) -> str:
    """Return the job's logs, having checked its driver's line: the driver and its workers import the
    ftcircuits shipped with the job, with this interpreter."""
    logs = cluster.job(job_id, "/logs")["logs"]
    shipped = shipped_package(cluster.state.ray_temp_dir)
    line = (
        rf"the driver \((.+?)\) imports ftcircuits from ({shipped}); its workers \((.+?)\) from ({shipped})\n"
    )
    driver = re.search(line, logs)
    assert driver is not None, logs[-4000:]
    assert driver[1] == sys.executable and driver[3] == sys.executable and driver[2] == driver[4]
    assert "Found multiple active Ray instances" not in logs  # its workers know their cluster (RAY_ADDRESS)
    return logs


def working_dir_copy(cluster: SubmissionCluster, job: dict) -> Path:
    """Return Ray's unpacked copy of the working directory the job was submitted with."""
    package = job["runtime_env"]["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    (copy,) = {
        p.resolve()
        for p in cluster.state.ray_temp_dir.glob(f"session_*/runtime_resources/working_dir_files/{package}")
    }
    return copy


def test_a_submitted_finetune_stores_its_run_and_mlflow_run_where_the_config_said(
    tmp_path, submission_cluster, submitted_finetune
):
    from mlflow.tracking import MlflowClient

    cluster, state = submission_cluster, submission_cluster.state
    storage, config, job_id = submitted_finetune.storage, submitted_finetune.config, submitted_finetune.job_id
    result = submitted_finetune.result
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    job = cluster.job(job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["entrypoint"] == f"{sys.executable} -m jobs.finetune --config {config}"
    shipped_lines(cluster, job_id)

    run = storage / RUN
    assert read_checkpoint_index(run)["step"].to_list() == SMALL_RUN_STEPS
    record = json.loads((run / "finetune.json").read_text())
    assert record["out"] == str(run) and record["data_dir"] == str(run / "data" / "addsub-100")
    client = MlflowClient(state.mlflow_uri)  # the head's MLflow server: MLFLOW_TRACKING_URI of its jobs
    mlflow_run = client.get_run(record["mlflow_run"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["out"] == str(run)
    accuracy = client.get_metric_history(mlflow_run.info.run_id, "eval_accuracy")
    assert [m.step for m in accuracy] == SMALL_RUN_STEPS
    index = client.download_artifacts(mlflow_run.info.run_id, "checkpoints/index.parquet", str(tmp_path))
    assert Path(index).read_bytes() == (run / "checkpoints" / "index.parquet").read_bytes()

    copy = working_dir_copy(cluster, job)
    names = [p.name for p in cluster.root.iterdir() if p.name not in (".git", "platform", "runs")]
    ignored = subprocess.run(
        ["git", "check-ignore", *names], cwd=cluster.root, capture_output=True, text=True
    )
    # Ray leaves out what git ignores (the egg-info, caches, virtual environments) and our excludes
    assert sorted(p.name for p in copy.iterdir()) == sorted(set(names) - set(ignored.stdout.split()))
    assert [p for p in copy.rglob("*") if p.name in ("finetune.json", "mlflow.db", "checkpoints")] == []
    assert not (state.root.parent / "cluster-storage").exists()


def test_a_submitted_circuits_job_reads_that_run_and_stores_its_circuits_where_the_config_said(
    tmp_path, submission_cluster, submitted_finetune
):
    from mlflow.tracking import MlflowClient

    cluster, state = submission_cluster, submission_cluster.state
    assert submitted_finetune.result.returncode == 0, "the fine-tuning run it reads failed"
    storage = submitted_finetune.storage
    job_id = f"ftc-circuits-{secrets.token_hex(4)}"
    # the run as the fine-tuning config named it, relative: under the FTCIRCUITS_STORAGE the job is given
    result = cluster.submit("jobs.circuits", circuits_of_run_args(RUN, CIRCUITS),
                            {"FTCIRCUITS_STORAGE": str(storage)}, job_id)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    job = cluster.job(job_id)
    assert job["status"] == "SUCCEEDED"
    logs = shipped_lines(cluster, job_id)  # and the circuit actors import it: they ran (below)

    run = storage / RUN
    (out,) = (run / "circuits").iterdir()  # one set of settings
    assert f"3 circuits computed, 0 already on disk: {out}\n" in logs
    summary = pl.read_parquet(out / SUMMARY_FILE)
    assert summary["key"].to_list() == [f"step-{step:06d}" for step in SMALL_RUN_STEPS]
    assert summary["step"].to_list() == SMALL_RUN_STEPS
    assert not (run / "mlflow.db").exists()  # its MLflow run is on the head's server, as the run's
    client = MlflowClient(state.mlflow_uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert {"finetune", "circuits"} <= set(experiments)
    runs = client.search_runs([experiments["circuits"]])
    (circuits,) = [r for r in runs if r.data.params["run"] == str(run)]
    assert circuits.info.status == "FINISHED" and circuits.info.run_name == "submitted-tiny-circuits"
    steps = [m.step for m in client.get_metric_history(circuits.info.run_id, "faithfulness")]
    assert steps == SMALL_RUN_STEPS
    logged = client.download_artifacts(circuits.info.run_id, f"circuits/{SUMMARY_FILE}", str(tmp_path))
    assert Path(logged).read_bytes() == (out / SUMMARY_FILE).read_bytes()
    copy = working_dir_copy(cluster, job)
    assert [p for p in copy.rglob("*") if p.name in (SUMMARY_FILE, "mlflow.db")] == []
    assert not (state.root.parent / "cluster-storage").exists()


def test_a_submission_without_the_token_or_with_a_wrong_one_is_refused(tmp_path, submission_cluster):
    cluster, state = submission_cluster, submission_cluster.state
    url, body = f"{state.dashboard_url}/api/jobs/", {"entrypoint": "echo refused"}
    missing = requests.post(url, json=body, timeout=30)
    assert (missing.status_code, missing.text) == (401, "Unauthorized: Missing authentication token")
    wrong = requests.post(url, json=body, headers={"Authorization": f"Bearer {'0' * 64}"}, timeout=30)
    assert (wrong.status_code, wrong.text) == (403, "Forbidden: Invalid authentication token")

    wrong_token = tmp_path / "wrong_token"
    wrong_token.write_text("0" * 64)
    refusals = [  # ray job submit: (environment changes, what it says)
        ({"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN_PATH": None},  # sends no token: the server answers 401
         "Authentication required: Unauthorized: Missing authentication token"),
        ({"RAY_AUTH_TOKEN_PATH": str(wrong_token)},
         "Authentication failed: Forbidden: Invalid authentication token"),
        ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "no_token")},  # refused by the client itself
         f"RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: {tmp_path / 'no_token'}."),
    ]  # fmt: skip
    for changes, expected in refusals:
        job_id = f"ftc-refused-{secrets.token_hex(4)}"
        env = cluster.client_env(**changes)
        result = cluster.submit("jobs.finetune", ["--help"], {}, job_id, env=env, timeout=300)
        assert result.returncode == 1 and expected in result.stderr, result.stderr[-3000:]
        with pytest.raises(requests.HTTPError, match="404"):
            cluster.job(job_id)  # never created


def run_driver(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_a_driver_joining_by_address_ships_the_package_to_workers_that_lack_it(submission_cluster):
    cluster, state = submission_cluster, submission_cluster.state
    env = cluster.client_env(RAY_ADDRESS=state.gcs_address)  # a driver run directly on the cluster
    joined = run_driver("import jobs.cli\nfrom ftcircuits.cluster.connection import connect\nconnect()", env,
                        cluster.root)  # fmt: skip
    assert joined.returncode == 0, joined.stderr[-3000:]
    driver = Path(ftcircuits.__path__[0])
    line = rf"the driver \({re.escape(sys.executable)}\) imports ftcircuits from {re.escape(str(driver))}; "
    assert re.search(
        line + rf"its workers \(.+\) from {shipped_package(state.ray_temp_dir)}\n", joined.stdout
    )

    # a driver that joins without shipping: the workers import the nodes' stale ftcircuits
    plain = run_driver(
        "import os, ray\nray.init(address=os.environ['RAY_ADDRESS'])\n"
        "from ftcircuits.cluster.connection import check_package_on_workers\n"
        "check_package_on_workers(os.environ['RAY_ADDRESS'])",
        env,
        cluster.root,
    )
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines()[-1] == (
        f"ftcircuits.cluster.address.ClusterError: the workers of the Ray cluster at {state.gcs_address} "
        f"cannot import ftcircuits (ImportError: {STALE_PACKAGE_ERROR}): ship the package with the job "
        "(python -m jobs.local_cluster submit MODULE ..., or ray job submit --working-dir . "
        """--runtime-env-json '{"py_modules": ["platform/ftcircuits"]}' -- ...), or install ftcircuits """
        "on the cluster's nodes"
    )


def test_without_an_address_a_driver_starts_its_own_ray_beside_a_running_head(tmp_path, submission_cluster):
    state = submission_cluster.state
    ray_tmp = Path(tempfile.mkdtemp(prefix="ftc-own-", dir="/tmp"))  # short: Ray's sockets live there
    token = ray_tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENVIRONMENT}
    env |= {"RAY_AUTH_TOKEN_PATH": str(token), "RAY_TMPDIR": str(ray_tmp)}
    script = (
        "import ray\nfrom ftcircuits.cluster.connection import connect\nconnect(num_cpus=1)\n"
        "print('GCS', ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'])"
    )
    try:
        result = run_driver(script, env, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (address, cpus) = re.search(r"^GCS (\S+) (\S+)$", result.stdout, re.M).groups()
        assert address.rsplit(":", 1)[1] != state.gcs_address.rsplit(":", 1)[1] and cpus == "1.0"
        assert (
            len({p.resolve() for p in (ray_tmp / "ray").glob("session_*")}) == 1
        )  # its own, in its temp dir
        assert state.is_up()  # the head it did not join is untouched
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_up_twice_is_already_up_and_down_stops_exactly_its_processes(capsys, submission_cluster):
    root = Path(tempfile.mkdtemp(prefix="ftc-updown-"))
    try:
        state, started = up(root, root / "storage", cpus=1, mlflow=False)
        assert started and read_state(root) == state
        main(["--state", str(root), "up"])
        assert capsys.readouterr().out.splitlines()[0] == (
            f"already up: Ray head {state.dashboard_url} (pid {state.ray_pid}), MLflow none; "
            f"state in {root / STATE_FILE}"
        )
        head = psutil.Process(state.ray_pid)
        deadline = time.monotonic() + 120  # the raylet may start a moment after ``up`` returns
        while (
            "raylet" not in {p.name() for p in head.children(recursive=True)} and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        processes = [head, *head.children(recursive=True)]
        names = {p.name() for p in processes}
        assert {"gcs_server", "raylet"} <= names, names
        main(["--state", str(root), "down"])
        assert capsys.readouterr().out == f"stopped [{state.ray_pid}]\n"
        assert [p for p in processes if p.is_running()] == []
        assert read_state(root) is None and not state.ray_temp_dir.exists()
        assert submission_cluster.state.is_up()  # another head on the machine is untouched
    finally:
        down(root)
        shutil.rmtree(root, ignore_errors=True)
