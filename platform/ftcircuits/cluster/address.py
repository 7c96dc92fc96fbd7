"""Whether a cluster's address answers, before a driver hands it to ``ray.init`` (which would retry an
address where nothing listens for minutes), and the cluster errors. No Ray import: ``jobs.cli`` turns
ClusterUnreachableError into exit status 2 in jobs that never import Ray.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

CONNECT_TIMEOUT_ENV = "FTCIRCUITS_RAY_CONNECT_TIMEOUT_S"
CONNECT_TIMEOUT_S = 10.0
"""How long a driver waits for ``RAY_ADDRESS`` to answer before it gives up (``CONNECT_TIMEOUT_ENV``)."""


class ClusterError(RuntimeError):
    """The cluster cannot run this package; the message says which cluster and what to do."""


class ClusterUnreachableError(ClusterError):
    """Nothing answers at the cluster's address: an input error (jobs exit 2), named with what to check."""


def connect_timeout() -> float:
    """Return the seconds to wait for a cluster's address to answer: ``FTCIRCUITS_RAY_CONNECT_TIMEOUT_S``
    (a positive number) or CONNECT_TIMEOUT_S; ClusterError for another value."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return CONNECT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ClusterError(f"{CONNECT_TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return seconds


def recorded_address() -> tuple[str, Path]:
    """Return the address Ray's ``auto`` would join first (the cluster the last ``ray start`` recorded in
    Ray's temporary directory, or "" when none is) and the file it is recorded in."""
    from ray._common.utils import get_ray_address_file  # Ray's own rule for its temporary directory

    path = Path(get_ray_address_file(None))
    try:
        return path.read_text().strip(), path
    except OSError:
        return "", path


def address_host_port(address: str) -> tuple[str, int] | None:
    """Return the host and port of a ``host:port`` (or ``ray://host:port``) address; None for another form."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    return (host, int(port)) if host and port.isdigit() else None


def check_address_answers(address: str, timeout_s: float | None = None) -> None:
    """Return once something accepts a TCP connection at ``address`` (``host:port``), retrying refused
    connections until ``timeout_s`` (default: ``connect_timeout()``) has passed; then raise
    ClusterUnreachableError, one line naming the address and what to check.

    ``auto`` is checked at the address Ray records for the last ``ray start`` on this machine; with none
    recorded Ray looks for a running GCS process itself, and fails at once when there is none. Another
    address form (one ``host:port`` cannot be read from) is left to Ray.
    """
    timeout_s = connect_timeout() if timeout_s is None else timeout_s
    named = f"RAY_ADDRESS={address}"
    if address == "auto":
        address, recorded = recorded_address()
        named = f"RAY_ADDRESS=auto (the cluster {recorded} names: {address})"
    target = address_host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(target, timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return
        except socket.gaierror as error:  # a name that does not resolve: waiting does not help
            cause = f"{target[0]} does not resolve: {error.strerror}"
            break
        except OSError as error:
            cause = error.strerror or type(error).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise ClusterUnreachableError(
        f"nothing answers at the Ray cluster {named} within {timeout_s:g} s ({cause}): check that its "
        f"head is up (ray status --address {address}; python -m jobs.local_cluster up starts one), that the "
        "port is its GCS port (6379 by default, not the dashboard's 8265) and that no firewall blocks it; or "
        f"unset RAY_ADDRESS to start a local cluster of this job's own ({CONNECT_TIMEOUT_ENV} sets the wait)"
    )
