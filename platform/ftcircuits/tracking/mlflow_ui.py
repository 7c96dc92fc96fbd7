"""The MLflow UI over a run's SQLite store: ``mlflow server`` on 127.0.0.1, for a browser to read.

``serve_ui`` starts the server in a process group of its own (the ``mlflow`` command starts uvicorn as a
child), waits for its ``/health`` and, on leaving, ends that group, and only it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

STARTUP_S = 180.0  # a first start migrates nothing but imports much: tens of seconds on a busy machine


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _end_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # the group this server leads: its uvicorn too
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def serve_ui(store: Path, port: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Serve the MLflow UI over the SQLite store ``store`` (``<out>/mlflow.db``; new runs' artifacts in
    ``<out>/mlartifacts``); yield its address, ``http://127.0.0.1:<port>``. RuntimeError (with the server's
    last output) when it does not answer within ``STARTUP_S``."""
    store = Path(store).resolve()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
               "--artifacts-destination", str(store.parent / "mlartifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = (
        Path(log)
        if log is not None
        else Path(tempfile.mkdtemp(prefix="ftcircuits-mlflow-ui-")) / "server.log"
    )
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "no answer"
                raise RuntimeError(
                    f"mlflow server over {store}: {state}; its output:\n{log.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        _end_group(process)
