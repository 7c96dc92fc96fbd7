"""Autoscaling on Ray's fake multi-node provider: a head with no workers grows by one worker node per
task that needs a resource only the worker type has, and shrinks back to the head once the nodes have
been idle for ``idle_timeout_minutes``; nothing of the cluster outlives it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.fake_autoscaling import (
    HEAD_TYPE,
    OBJECT_STORE_BYTES,
    FakeAutoscalingCluster,
    fake_cluster_config,
)

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the head's node id under RAY_FAKE_CLUSTER=1
WORKER_TYPE = "ray.worker.fake_gpu"
RESOURCE = "fake_gpu"
TASKS = 2  # one worker node each
IDLE_TIMEOUT_MINUTES = 0.1
JOB = Path(__file__).with_name("autoscaling_job.py")


def worker_types(max_workers: int) -> dict:
    resources = {"CPU": 1, RESOURCE: 1, "object_store_memory": OBJECT_STORE_BYTES}
    return {WORKER_TYPE: {"resources": resources, "max_workers": max_workers}}


def raylets(cluster: FakeAutoscalingCluster) -> int:
    """Return how many raylets (one per node, the head's included) of the cluster are running."""
    return sum(1 for p in cluster.processes() if p.name() == "raylet")


def test_the_fake_cluster_config_is_complete_for_the_autoscaler():
    from ray.autoscaler._private.util import validate_config

    config = fake_cluster_config(
        "127.0.0.1:1", 1, worker_types(3), max_workers=3, idle_timeout_minutes=0.1, upscaling_speed=1.0
    )
    validate_config(config)  # Ray's schema, and the fields a config filled out with defaults has
    assert config["provider"]["type"] == "fake_multinode"
    assert config["head_node_type"] == HEAD_TYPE
    assert config["available_node_types"][WORKER_TYPE]["min_workers"] == 0


@pytest.mark.ray
@pytest.mark.slow
def test_worker_nodes_are_added_for_the_tasks_and_removed_when_idle(tmp_path):
    # room for one node more than the tasks need: the autoscaler must size the cluster, not fill it
    cluster = FakeAutoscalingCluster(
        worker_types(TASKS + 1),
        head_cpus=1,
        max_workers=TASKS + 1,
        idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
    )
    try:
        cluster.start()
        assert raylets(cluster) == 1
        barrier = cluster.root / "barrier"
        barrier.mkdir()
        out = tmp_path / "job.json"
        job = subprocess.Popen(
            [sys.executable, str(JOB), str(TASKS), RESOURCE, str(barrier), str(out)],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        most_raylets = 1
        try:
            while job.poll() is None:
                most_raylets = max(most_raylets, raylets(cluster))
                time.sleep(1.0)
            log = job.communicate()[0]
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        assert job.returncode == 0, f"{log[-3000:]}\n{cluster.logs()}"
        seen = json.loads(out.read_text())

        head_only = [FAKE_HEAD_NODE_ID]
        assert seen["before"] == head_only
        counts = [count for _, count in seen["timeline"]]
        assert max(counts) == 1 + TASKS, seen["timeline"]
        assert len(seen["at_finish"]) == 1 + TASKS
        task_nodes = [task["node_id"] for task in seen["tasks"]]
        assert len(set(task_nodes)) == TASKS and FAKE_HEAD_NODE_ID not in task_nodes
        assert set(task_nodes) <= set(seen["at_finish"])
        for node in task_nodes:
            assert seen["node_resources"][node][RESOURCE] == 1
        assert RESOURCE not in seen["node_resources"][FAKE_HEAD_NODE_ID]
        # shrunk back to the head, once the nodes had been idle for the timeout (seen to the second)
        assert seen["after"] == head_only, f"{seen['timeline']}\n{cluster.logs()}"
        shrunk_at = next(t for t, count in seen["timeline"] if t >= seen["finished_at"] and count == 1)
        assert shrunk_at - seen["finished_at"] >= IDLE_TIMEOUT_MINUTES * 60 - 1, seen["timeline"]

        # the removed nodes' processes are gone too: their raylets were running, now only the head's is
        assert most_raylets == 1 + TASKS
        deadline = time.monotonic() + 30
        while raylets(cluster) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert raylets(cluster) == 1
    finally:
        left = cluster.stop()
    assert left == []
    assert cluster.processes() == []
    assert not cluster.root.exists()


@pytest.mark.ray
@pytest.mark.slow
def test_stop_ends_the_worker_nodes_the_autoscaler_still_runs():
    types = worker_types(2)
    types[WORKER_TYPE]["min_workers"] = 2  # launched at once, never idle-removed
    cluster = FakeAutoscalingCluster(types, head_cpus=1, max_workers=2)
    try:
        cluster.start()
        deadline = time.monotonic() + 300  # generous: two fake nodes start slowly on a loaded machine
        while raylets(cluster) < 3 and time.monotonic() < deadline:
            time.sleep(1.0)
        assert raylets(cluster) == 3, cluster.logs()
    finally:
        left = cluster.stop()
    assert left == []
    assert cluster.processes() == []
