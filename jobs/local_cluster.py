"""A local Ray head (token auth) and MLflow server for one user, and job submission to them.

    python -m jobs.local_cluster up [--storage DIR] [--cpus N]   # prints what to export
    python -m jobs.local_cluster submit jobs.finetune --config jobs/configs/finetune-tiny-short.yaml
    python -m jobs.local_cluster down

``up`` starts ``ray start --head --block`` and ``mlflow server`` in process groups of their own, with
free ports, a private Ray temp dir and auth token, and records them in ``runs/local-cluster/state.json``;
``down`` stops exactly those processes. ``submit`` runs ``ray job submit`` with the working directory
and ``platform/ftcircuits`` shipped, this environment's interpreter as the entrypoint's, and
``FTCIRCUITS_STORAGE`` / ``MLFLOW_TRACKING_URI`` passed to the job's driver, so runs land in the storage
(here: the directory ``up`` ran in), never in Ray's copy of the working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
import requests
from pydantic import BaseModel

import ftcircuits
from ftcircuits.cluster.connection import SHIPPING_EXCLUDES
from ftcircuits.paths import atomic_file
from ftcircuits.storage import STORAGE_ENV

STATE_DIR = Path("runs/local-cluster")
STATE_FILE = "state.json"
FORWARDED_ENV = (STORAGE_ENV, "MLFLOW_TRACKING_URI")  # from the submitter to the job's driver
START_TIMEOUT_S = 180.0


class LocalCluster(BaseModel):
    """What ``up`` started: the processes (pid and start time, so a reused pid is never signalled) and
    the addresses, token and storage its jobs use."""

    root: Path
    ray_temp_dir: Path
    gcs_address: str
    dashboard_url: str
    token_path: Path
    storage: Path
    mlflow_uri: str | None
    ray_pid: int
    ray_started: float
    mlflow_pid: int | None = None
    mlflow_started: float | None = None

    def environment(self) -> dict[str, str]:
        """Return the variables a shell exports to submit jobs here (``RAY_ADDRESS`` is the dashboard's,
        as ``ray job submit`` wants it)."""
        env = {"RAY_ADDRESS": self.dashboard_url, "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN_PATH": str(self.token_path), STORAGE_ENV: str(self.storage)}  # fmt: skip
        return env | ({"MLFLOW_TRACKING_URI": self.mlflow_uri} if self.mlflow_uri else {})

    def processes(self) -> list[tuple[int, float]]:
        started = [(self.ray_pid, self.ray_started), (self.mlflow_pid, self.mlflow_started)]
        return [(pid, at) for pid, at in started if pid is not None and at is not None]

    def is_up(self) -> bool:
        return all(_process(pid, at) is not None for pid, at in self.processes())


def _process(pid: int, started: float) -> psutil.Process | None:
    """Return the process ``pid`` if it is still the one started at ``started``."""
    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - started) < 1e-3 else None
    except psutil.NoSuchProcess:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(processes: list[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)  # psutil refuses a pid reused since
        except psutil.NoSuchProcess:
            pass


def stop_process_group(pid: int, started: float, timeout: float = 30.0) -> None:
    """Stop the process ``pid`` (if it is still the one started at ``started``), its descendants and the
    rest of its process group: SIGTERM to it alone (Ray's head and MLflow's server stop their own
    processes), then SIGTERM to whatever of them is left, then SIGKILL; ``timeout`` seconds per step."""
    leader = _process(pid, started)
    if leader is None:
        return
    everyone = list(
        {p.pid: p for p in [leader, *leader.children(recursive=True), *_group_members(pid)]}.values()
    )
    _send([leader], signal.SIGTERM)
    psutil.wait_procs([leader], timeout=timeout)
    _, alive = psutil.wait_procs(everyone, timeout=5.0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive:
            return
        _send(alive, sig)
        _, alive = psutil.wait_procs(alive, timeout=timeout)


def _group_members(pgid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def _wait_for(
    url: str, process: subprocess.Popen, log: Path, headers: Mapping[str, str] | None = None
) -> None:
    """Wait until ``url`` answers 200, or raise with the log's tail if ``process`` ends first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[2:4]} exited ({process.returncode}): {log.read_text()[-3000:]}"
            )
        try:
            if requests.get(url, headers=dict(headers or {}), timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S:.0f} s; see {log}")


def _spawn(command: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True, cwd=log.parent)  # fmt: skip


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    """Start an MLflow server on a free port with its SQLite store in ``root``; return it and its URI."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "mlartifacts"),
               "--port", str(port), "--workers", "1"]  # fmt: skip
    process = _spawn(command, root / "mlflow.log", os.environ)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{uri}/health", process, root / "mlflow.log")
    except BaseException:
        stop_process_group(process.pid, psutil.Process(process.pid).create_time())
        raise
    return process, uri


def start_head(root: Path, temp_dir: Path, token_path: Path, cpus: int, env: Mapping[str, str]):
    """Start a Ray head with token auth, its own temp dir and free ports, in a process group of its own;
    ``env`` reaches its drivers and workers. Return the process, GCS address and dashboard URL."""
    gcs, dashboard = free_port(), free_port()
    ports = {"--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}  # fmt: skip
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--temp-dir", str(temp_dir), "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--num-cpus", str(cpus), "--disable-usage-stats",
               *[str(item) for option in ports.items() for item in option]]  # fmt: skip
    head_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | dict(env)
    # one node has nowhere to drain to: down stops it at once
    head_env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # fmt: skip
    process = _spawn(command, root / "ray-head.log", head_env)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        token = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
        _wait_for(f"{url}/api/jobs/", process, root / "ray-head.log", token)
    except BaseException:
        stop_process_group(process.pid, psutil.Process(process.pid).create_time())
        raise
    return process, f"127.0.0.1:{gcs}", url


def read_state(root: Path = STATE_DIR) -> LocalCluster | None:
    path = Path(root) / STATE_FILE
    return LocalCluster.model_validate_json(path.read_text()) if path.is_file() else None


def up(root: Path = STATE_DIR, storage: Path | None = None, cpus: int = 2, mlflow: bool = True,
       env: Mapping[str, str] | None = None) -> tuple[LocalCluster, bool]:  # fmt: skip
    """Start the head (and MLflow server) recorded in ``root``, unless they are up; return the cluster and
    whether it was started now. ``storage`` (default: the current directory) is ``FTCIRCUITS_STORAGE``
    of its jobs; ``env`` more variables for them."""
    root = Path(root).resolve()
    state = read_state(root)
    if state is not None and state.is_up():
        return state, False
    if state is not None:
        down(root)  # a half-dead cluster: stop what is left
    root.mkdir(parents=True, exist_ok=True)
    storage = Path(storage or Path.cwd()).resolve()
    token_path = root / "auth_token"
    token_path.touch(mode=0o600)
    token_path.write_text(secrets.token_hex(32))
    temp_dir = Path(tempfile.mkdtemp(prefix="ftc-ray-", dir="/tmp"))  # short: Ray's sockets live there
    server, uri = start_mlflow(root) if mlflow else (None, None)
    try:
        jobs_env = (
            {STORAGE_ENV: str(storage)} | ({"MLFLOW_TRACKING_URI": uri} if uri else {}) | dict(env or {})
        )
        head, gcs, url = start_head(root, temp_dir, token_path, cpus, jobs_env)
    except BaseException:
        if server is not None:
            stop_process_group(server.pid, psutil.Process(server.pid).create_time())
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    state = LocalCluster(
        root=root, ray_temp_dir=temp_dir, gcs_address=gcs, dashboard_url=url, token_path=token_path,
        storage=storage, mlflow_uri=uri, ray_pid=head.pid, ray_started=psutil.Process(head.pid).create_time(),
        mlflow_pid=server.pid if server else None,
        mlflow_started=psutil.Process(server.pid).create_time() if server else None,
    )  # fmt: skip
    with atomic_file(root / STATE_FILE) as tmp:
        tmp.write_text(state.model_dump_json(indent=1))
    return state, True


def down(root: Path = STATE_DIR) -> LocalCluster | None:
    """Stop the processes ``up`` recorded in ``root`` (nothing else) and forget them; return what was
    recorded, or None."""
    root = Path(root).resolve()
    state = read_state(root)
    if state is None:
        return None
    for pid, started in state.processes():
        stop_process_group(pid, started)
    shutil.rmtree(state.ray_temp_dir, ignore_errors=True)
    (root / STATE_FILE).unlink()
    return state


def forwarded_env() -> dict[str, str]:
    """Return the variables of ``FORWARDED_ENV`` set in this environment."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def submission_runtime_env(env_vars: Mapping[str, str] | None = None, working_dir: Path = Path(".")) -> dict:
    """Return the runtime environment of a submission: ``working_dir`` (the repository: ``jobs``,
    ``tuning``, configs; without ``platform/``), the imported ``ftcircuits`` as a py_module, and
    ``env_vars`` (default: ``forwarded_env()``) for the driver and its workers."""
    env_vars = forwarded_env() if env_vars is None else dict(env_vars)
    runtime_env = {
        "working_dir": str(Path(working_dir).resolve()),
        "py_modules": [str(Path(ftcircuits.__path__[0]))],
        "excludes": [*SHIPPING_EXCLUDES, "/platform"],  # ftcircuits travels as its py_module
    }
    return runtime_env | ({"env_vars": env_vars} if env_vars else {})


def submit_command(module: str, args: Sequence[str] = (), env_vars: Mapping[str, str] | None = None,
                   working_dir: Path = Path("."), submission_id: str | None = None) -> list[str]:  # fmt: skip
    """Return the ``ray job submit`` command that runs ``python -m module args`` on the cluster of
    ``RAY_ADDRESS``, with this environment's interpreter (``sys.executable``) as the entrypoint's; see
    ``submission_runtime_env`` for what travels with it."""
    runtime_env = json.dumps(submission_runtime_env(env_vars, working_dir))
    named = ["--submission-id", submission_id] if submission_id else []
    return [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--runtime-env-json", runtime_env,
            *named, "--", sys.executable, "-m", module, *args]  # fmt: skip


def _print_exports(state: LocalCluster) -> None:
    for name, value in state.environment().items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"# a driver run directly (python -m jobs.NAME) joins with RAY_ADDRESS={state.gcs_address}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=STATE_DIR, help="where up records the cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the head and MLflow server (if not up)")
    start.add_argument("--storage", type=Path, help="FTCIRCUITS_STORAGE of its jobs (default: here)")
    start.add_argument("--cpus", type=int, default=2)
    start.add_argument("--no-mlflow", action="store_true", help="runs keep SQLite stores under their out")
    commands.add_parser("down", help="stop what up started")
    submit = commands.add_parser("submit", help="ray job submit MODULE ARGS to the cluster that is up")
    submit.add_argument("module", help="e.g. jobs.finetune")
    submit.add_argument("args", nargs=argparse.REMAINDER, help="the job's arguments")
    args = parser.parse_args(argv)
    if args.command == "up":
        state, started = up(args.state, args.storage, args.cpus, mlflow=not args.no_mlflow)
        status = "started" if started else "already up"
        print(f"{status}: Ray head {state.dashboard_url} (pid {state.ray_pid}), "
              f"MLflow {state.mlflow_uri or 'none'}; state in {state.root / STATE_FILE}")  # fmt: skip
        _print_exports(state)
    elif args.command == "down":
        state = down(args.state)
        print(
            "nothing recorded is up" if state is None else f"stopped {[pid for pid, _ in state.processes()]}"
        )
    else:
        state = read_state(args.state)
        if state is None or not state.is_up():
            raise SystemExit(f"error: no cluster is up in {args.state}: run python -m jobs.local_cluster up")
        cluster_env = state.environment()
        job_env = {k: cluster_env[k] for k in FORWARDED_ENV if k in cluster_env} | forwarded_env()
        command = submit_command(args.module, args.args, job_env)
        print(shlex.join(command), flush=True)
        env = os.environ | {k: v for k, v in cluster_env.items() if k not in FORWARDED_ENV}
        raise SystemExit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
