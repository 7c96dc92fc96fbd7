"""The driver of the autoscaling test, run as its own process on a FakeAutoscalingCluster (RAY_ADDRESS).

``python autoscaling_job.py TASKS RESOURCE BARRIER_DIR OUT_JSON``: records the alive nodes, runs TASKS
tasks that each need ``{RESOURCE: 1}`` (and a CPU) and wait for one another (a file each in
BARRIER_DIR), so they run at once on TASKS distinct nodes, then waits for the cluster to shrink back to
the nodes it had. Writes what it saw to OUT_JSON: the alive node counts over time, the nodes the tasks
ran on and their resources.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray

SHRINK_TIMEOUT_S = 120


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def main(tasks: int, resource: str, barrier_dir: Path, out: Path) -> None:
    ray.init()
    start = time.monotonic()
    timeline: list[tuple[float, int]] = []

    def observe() -> list[dict]:
        nodes = alive_nodes()
        timeline.append((round(time.monotonic() - start, 1), len(nodes)))
        return nodes

    before = observe()

    @ray.remote(num_cpus=1, resources={resource: 1})
    def hold(index: int) -> dict:
        (barrier_dir / str(index)).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier_dir.iterdir())) < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("the other tasks never started")
            time.sleep(0.2)
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "resources": context.get_assigned_resources()}

    refs = [hold.remote(i) for i in range(tasks)]
    pending = refs
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        observe()
    results = ray.get(refs)
    finished_at = round(time.monotonic() - start, 1)
    at_finish = observe()
    deadline = time.monotonic() + SHRINK_TIMEOUT_S
    after = at_finish
    while len(after) > len(before) and time.monotonic() < deadline:
        time.sleep(1.0)
        after = observe()
    summary = {
        "before": [n["NodeID"] for n in before],
        "at_finish": [n["NodeID"] for n in at_finish],
        "after": [n["NodeID"] for n in after],
        "node_resources": {n["NodeID"]: n["Resources"] for n in at_finish},
        "tasks": results,
        "finished_at": finished_at,
        "timeline": timeline,
    }
    out.write_text(json.dumps(summary, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
