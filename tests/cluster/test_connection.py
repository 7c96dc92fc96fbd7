"""What a driver adds to its job's runtime environment when it joins a cluster, what a submission ships, and
the check that a cluster's address answers (no cluster needed)."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest

import ftcircuits
import jobs
import tuning
from ftcircuits.cluster import address
from ftcircuits.cluster.address import (
    CONNECT_TIMEOUT_ENV,
    CONNECT_TIMEOUT_S,
    ClusterUnreachableError,
    check_address_answers,
    connect_timeout,
)
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


def closed_port() -> int:
    """Return a local port where nothing listens (bound, read, closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_where_nothing_listens_is_named_with_what_to_check():
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ClusterUnreachableError) as error:
        check_address_answers(address, timeout_s=1)
    assert isinstance(error.value, ClusterError)
    assert str(error.value) == (
        f"nothing answers at the Ray cluster RAY_ADDRESS={address} within 1 s (Connection refused): check "
        f"that its head is up (ray status --address {address}; python -m jobs.local_cluster up starts one), "
        "that the port is its GCS port (6379 by default, not the dashboard's 8265) and that no firewall "
        "blocks it; or unset RAY_ADDRESS to start a local cluster of this job's own "
        "(FTCIRCUITS_RAY_CONNECT_TIMEOUT_S sets the wait)"
    )


def test_an_address_that_answers_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_address_answers(f"127.0.0.1:{port}", timeout_s=1)
        check_address_answers(f"ray://127.0.0.1:{port}", timeout_s=1)  # a Ray client's address too


def test_auto_is_checked_at_the_address_ray_recorded(monkeypatch, tmp_path):
    recorded = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(address, "recorded_address", lambda: ("", recorded))
    check_address_answers("auto", timeout_s=1)  # none recorded: Ray's own search, which fails at once
    port = closed_port()
    monkeypatch.setattr(address, "recorded_address", lambda: (f"127.0.0.1:{port}", recorded))
    with pytest.raises(ClusterUnreachableError, match=re.escape(
        f"RAY_ADDRESS=auto (the cluster {recorded} names: 127.0.0.1:{port}) within 1 s"
    )):  # fmt: skip
        check_address_answers("auto", timeout_s=1)


def test_the_wait_is_configurable_and_refused_unless_positive(monkeypatch):
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV, raising=False)
    assert connect_timeout() == CONNECT_TIMEOUT_S == 10
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "2.5")
    assert connect_timeout() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(CONNECT_TIMEOUT_ENV, bad)
        with pytest.raises(ClusterError, match=f"{CONNECT_TIMEOUT_ENV}='{bad}' must be a positive number"):
            connect_timeout()
