"""What a driver adds to its job's runtime environment when it joins a cluster, and what a submission
ships (no cluster needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ftcircuits
import jobs
import tuning
from ftcircuits.cluster.connection import (
    SHIPPING_EXCLUDES,
    ClusterError,
    cluster_address,
    joining_runtime_env,
)
from jobs.local_cluster import submit_command

PACKAGE = str(Path(ftcircuits.__path__[0]))


def test_a_driver_outside_a_job_ships_its_three_packages_and_pins_workers_to_its_cluster():
    assert joining_runtime_env("10.0.0.1:6379", {}) == {
        "py_modules": [PACKAGE, str(Path(jobs.__path__[0])), str(Path(tuning.__path__[0]))],
        "excludes": list(SHIPPING_EXCLUDES),
        "env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"},
    }


def test_a_submitted_job_ships_only_what_its_runtime_env_lacks():
    working_dir = {"working_dir": "gcs://_ray_pkg_1.zip", "env_vars": {"FTCIRCUITS_STORAGE": "/shared"}}
    assert joining_runtime_env("10.0.0.1:6379", working_dir) == {
        "py_modules": [PACKAGE],  # jobs and tuning travel in the working directory
        "excludes": list(SHIPPING_EXCLUDES),
        "env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"},
    }
    shipped = {"working_dir": "gcs://_ray_pkg_1.zip", "py_modules": ["gcs://_ray_pkg_2.zip"],
               "excludes": ["/runs"], "env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"}}  # fmt: skip
    assert joining_runtime_env("10.0.0.1:6379", shipped) == {}  # no field twice: Ray refuses a conflict
    assert joining_runtime_env("auto", {"excludes": ["/runs"]}) == {  # the job's excludes apply
        "py_modules": [PACKAGE, str(Path(jobs.__path__[0])), str(Path(tuning.__path__[0]))]
    }


def test_a_dashboard_address_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ClusterError) as error:
        cluster_address()
    assert str(error.value) == (
        "RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard's address, which serves job submission only: "
        "submit the job (python -m jobs.local_cluster submit MODULE ...) or set RAY_ADDRESS to the cluster's "
        "GCS address (host:port) to run this driver on it directly"
    )


def test_submit_command_runs_this_interpreter_with_the_package_shipped(tmp_path):
    command = submit_command(
        "jobs.finetune", ["--config", "x.yaml"], {"FTCIRCUITS_STORAGE": "/shared"}, tmp_path, "job-1"
    )
    split = command.index("--")
    assert command[:5] == [sys.executable, "-m", "ray.scripts.scripts", "job", "submit"]
    assert command[split:] == ["--", sys.executable, "-m", "jobs.finetune", "--config", "x.yaml"]
    assert command[5:split] == ["--runtime-env-json", command[6], "--submission-id", "job-1"]
    assert json.loads(command[6]) == {
        "working_dir": str(tmp_path),
        "py_modules": [PACKAGE],
        "excludes": [*SHIPPING_EXCLUDES, "/platform"],
        "env_vars": {"FTCIRCUITS_STORAGE": "/shared"},
    }
