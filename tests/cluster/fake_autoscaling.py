"""A local autoscaling Ray cluster on Ray's fake multi-node provider, started and stopped by PID.

``ray start --head --block --autoscaling-config=<file>`` with ``RAY_FAKE_CLUSTER=1`` runs the v1
autoscaler (the head's ``monitor.py``) with the ``fake_multinode`` provider: a "launched" worker node is a
``ray._private.node.Node`` (raylet, log monitor, agents) that the monitor process starts on this machine,
and a terminated one has its processes killed by the monitor.

The autoscaler reads the config file as it is (``yaml.safe_load``, no defaults filled in), so the file
written here is complete: every field Ray's own ``fake_multi_node/example.yaml`` has. That file is missing
from the Ray wheel, and only ``ray.cluster_utils.AutoscalingCluster`` and ``ray up`` (through
``prepare_config``) read it; neither is used here. ``AutoscalingCluster`` is avoided for a second reason:
its ``start()`` and ``shutdown()`` run ``ray stop --force``, which kills every Ray process on the machine.

The cluster never touches anything it did not start: its own short temporary directory (Ray's unix
sockets allow ~107 characters), its own free ports, its own auth token file, and a marker in the
environment of every process it starts (inherited by the monitor, the fake worker nodes and their Ray
workers). ``stop()`` ends the head's ``ray start`` process, then every process that carries the marker
or names the temporary directory in its command line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

HEAD_TYPE = "ray.head.default"  # the head's node type, as the fake provider names it
MARKER_VARIABLE = "FTC_FAKE_CLUSTER"  # in the environment of every process the cluster starts
OBJECT_STORE_BYTES = 100 * 1024**2  # per node; Ray's minimum is 75 MiB


def free_port() -> int:
    """Return a TCP port that is free now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_cluster_config(
    gcs_address: str,
    head_cpus: int,
    worker_types: dict[str, dict[str, Any]],
    *,
    max_workers: int,
    idle_timeout_minutes: float,
    upscaling_speed: float,
    cluster_name: str = "fake-autoscaling",
) -> dict[str, Any]:
    """Return a complete autoscaler config for the ``fake_multinode`` provider.

    ``worker_types`` maps a node type name to its ``resources`` (``CPU``, ``GPU`` and
    ``object_store_memory`` become the node's own; anything else is a custom resource),
    ``min_workers`` and ``max_workers``. The provider's ``gcs_address`` points the fake worker nodes at
    this cluster's GCS (without it they join ``<node ip>:6379``).
    """
    node_types: dict[str, Any] = {
        HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
    }
    for name, spec in worker_types.items():
        node_types[name] = {
            "resources": dict(spec["resources"]),
            "node_config": {},
            "min_workers": spec.get("min_workers", 0),
            "max_workers": spec.get("max_workers", max_workers),
        }
    return {
        "cluster_name": cluster_name,
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,  # no SSH setup: fake nodes are up to date when started
            "disable_launch_config_check": True,
        },
        "available_node_types": node_types,
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    """A head with no workers whose autoscaler adds and removes fake worker nodes on this machine.

    Use as a context manager, or call ``start()`` and ``stop()``. ``env()`` is the environment a driver
    needs (``RAY_ADDRESS`` and the auth token file); ``processes()`` lists every live process of the
    cluster.
    """

    def __init__(
        self,
        worker_types: dict[str, dict[str, Any]],
        *,
        head_cpus: int = 1,
        max_workers: int = 4,
        idle_timeout_minutes: float = 0.1,
        upscaling_speed: float = 10.0,
        update_interval_s: int = 1,
    ):
        import ray

        self.root = Path(tempfile.mkdtemp(prefix="fas", dir="/tmp"))
        self.temp_dir = self.root / "ray"
        self.config_path = self.root / "autoscaling.yaml"
        self.token_path = self.root / "auth_token"
        self.head_log = self.root / "head.log"
        self.marker = secrets.token_hex(8)
        self.port = free_port()
        # the address ``ray start`` itself picks (no --node-ip-address), so the fake nodes join the same
        self.gcs_address = f"{ray.util.get_node_ip_address()}:{self.port}"
        self.head_cpus = head_cpus
        self.update_interval_s = update_interval_s
        self.config = fake_cluster_config(
            self.gcs_address,
            head_cpus,
            worker_types,
            max_workers=max_workers,
            idle_timeout_minutes=idle_timeout_minutes,
            upscaling_speed=upscaling_speed,
        )
        self.head: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Return the environment for the head and for a driver of this cluster."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
        env.update(
            {
                "RAY_FAKE_CLUSTER": "1",
                "RAY_enable_autoscaler_v2": "0",
                "AUTOSCALER_UPDATE_INTERVAL_S": str(self.update_interval_s),
                "RAY_AUTH_MODE": "token",  # what `ray start` picks anyway when a token exists
                "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_ADDRESS": self.gcs_address,
                MARKER_VARIABLE: self.marker,
            }
        )
        return env

    def start(self, timeout: float = 120.0) -> str:
        """Start the head (its own session and process group) and return the GCS address once the
        head has written it; raise if the head exits or the address is not there in ``timeout``."""
        self.token_path.write_text(secrets.token_hex(32))
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        ray_cli = Path(sys.executable).with_name("ray")
        command = [
            str(ray_cli), "start", "--head", "--block",
            f"--temp-dir={self.temp_dir}",
            f"--port={self.port}",
            f"--autoscaling-config={self.config_path}",
            f"--num-cpus={self.head_cpus}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--include-dashboard=false",  # the head's API server still runs, on this port
            "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
            "--disable-usage-stats",
        ]  # fmt: skip
        with open(self.head_log, "wb") as log:
            self.head = subprocess.Popen(
                command,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        address_file = self.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.head.returncode}:\n{self.logs()}")
            if address_file.is_file() and address_file.read_text().strip():
                return address_file.read_text().strip()
            time.sleep(0.5)
        raise TimeoutError(f"the head did not start in {timeout}s:\n{self.logs()}")

    def processes(self) -> list[psutil.Process]:
        """Return the live processes of this cluster: those with its marker in their environment or
        its temporary directory in their command line (never this process)."""
        found = []
        for process in psutil.process_iter():
            if process.pid == os.getpid():
                continue
            try:
                if f"{self.root}/" in " ".join(process.cmdline()) or (
                    process.environ().get(MARKER_VARIABLE) == self.marker
                ):
                    if process.status() != psutil.STATUS_ZOMBIE:
                        found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def logs(self, lines: int = 40) -> str:
        """Return the tails of the head's output and of the autoscaler's logs (for failure messages)."""
        parts = []
        logs_dir = self.temp_dir / "session_latest" / "logs"
        for path in (self.head_log, logs_dir / "monitor.log", logs_dir / "monitor.err"):
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> list[psutil.Process]:
        """Stop the head gracefully (SIGTERM to ``ray start --block``, which stops its own processes),
        then SIGTERM and at last SIGKILL whatever of the cluster is left (the fake worker nodes the
        monitor started, and their workers). Return the processes still alive after ``timeout``
        (empty when all is well); the temporary directory is removed when none are."""
        if self.head is not None and self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)
            try:
                self.head.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                self.head.kill()
                self.head.wait()
        deadline = time.monotonic() + timeout
        left = self.processes()
        while left and time.monotonic() < deadline:
            for process in left:
                try:
                    process.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, left = psutil.wait_procs(left, timeout=3)
            for process in left:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(left, timeout=3)
            left = self.processes()  # a process may have started meanwhile
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def __enter__(self) -> FakeAutoscalingCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
