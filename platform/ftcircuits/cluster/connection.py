"""Joining a Ray cluster: a local one of our own, or ``RAY_ADDRESS``'s with the package shipped to it.

A driver that joins a cluster ships its own copy of ``ftcircuits`` (and of ``jobs`` and ``tuning`` when
it has imported them) to the workers as ``py_modules``, unless the job was submitted with them already
(``ray job submit`` with ``py_modules`` in its runtime environment, which tasks inherit). It then runs
one tiny task that imports ``ftcircuits`` on a worker, so a cluster that cannot run the package stops
the job with one message before any work. Before ``ray.init`` it checks that the address answers at all
(``cluster.address``): Ray itself would retry an address where nothing listens for minutes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import ray

from ftcircuits import console
from ftcircuits.cluster.address import ClusterError, check_address_answers
from ftcircuits.run_layout import RAY_DIR
from ftcircuits.storage import STORAGE_ENV, storage_root

SHIPPED_PACKAGES = ("ftcircuits", "jobs", "tuning")
SHIPPING_EXCLUDES = (
    "__pycache__", "*.pyc", "/.git", "/.venv*", "/runs", "/data", "mlruns", "*.db",
    ".pytest_cache", ".ruff_cache",
)  # fmt: skip
"""What never travels with a runtime environment (anchored ``/`` patterns: the working directory's top)."""
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted driver
RAY_PACKAGE_CHECK_TIMEOUT_S = 300.0


def submitted_runtime_env() -> dict:
    """Return the runtime environment of the submitted job this driver runs in (``{}`` outside one)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


def package_dir(name: str) -> Path | None:
    """Return the directory of the imported package ``name``, or None when it is not imported."""
    module = sys.modules.get(name)
    paths = list(getattr(module, "__path__", []))
    return Path(paths[0]) if len(paths) == 1 else None


def joining_runtime_env(address: str, submitted: dict | None = None) -> dict:
    """Return what a driver joining the cluster at ``address`` adds to its job's runtime environment
    (``submitted``, default: this driver's): the packages the job does not ship already, and
    ``RAY_ADDRESS`` for its workers, where Ray's State API (Ray Train's placement-group cleaner uses it)
    would otherwise guess among the clusters on the machine.

    ``jobs`` and ``tuning`` sit at the top of a submitted working directory, so they travel with it;
    ``ftcircuits`` (under ``platform/``) does not, and is shipped unless the job carries ``py_modules``.
    """
    submitted = submitted_runtime_env() if submitted is None else submitted
    added: dict = {}
    if "py_modules" not in submitted:
        names = ["ftcircuits"] if "working_dir" in submitted else list(SHIPPED_PACKAGES)
        added["py_modules"] = [str(path) for path in map(package_dir, names) if path is not None]
        if "excludes" not in submitted:
            added["excludes"] = list(SHIPPING_EXCLUDES)
    if address != "auto" and "RAY_ADDRESS" not in submitted.get("env_vars", {}):
        added["env_vars"] = {"RAY_ADDRESS": address}
    return added


def cluster_address() -> str:
    """Return the cluster a driver joins: ``RAY_ADDRESS`` (a GCS address, or ``auto``), or ``local`` for a
    new local cluster of its own; raise ClusterError for a dashboard's address."""
    address = os.environ.get("RAY_ADDRESS") or "local"
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"RAY_ADDRESS={address} is a dashboard's address, which serves job submission only: submit the "
            "job (python -m jobs.local_cluster submit MODULE ...) or set RAY_ADDRESS to the cluster's GCS "
            "address (host:port) to run this driver on it directly"
        )
    return address


def _import_package() -> Callable[[], dict]:
    # defined in a function so that cloudpickle ships it by value: a worker unpickles it without
    # importing ftcircuits, and reports the import's own error
    def package_location() -> dict:
        import importlib
        import sys

        module = importlib.import_module("ftcircuits")
        return {"version": module.__version__, "path": str(module.__path__[0]), "python": sys.executable}

    return package_location


def check_package_on_workers(where: str, runtime_env: dict | None = None) -> dict:
    """Import ``ftcircuits`` in a task on the connected cluster (``where`` names it in errors); return the
    workers' version, package path and interpreter, or raise ClusterError with what to do.

    ``runtime_env`` is the task's own (tests break the import with it); by default the job's.
    """
    check = ray.remote(num_cpus=0, max_retries=0)(_import_package())
    options = {"runtime_env": runtime_env} if runtime_env else {}
    try:
        return ray.get(check.options(**options).remote(), timeout=RAY_PACKAGE_CHECK_TIMEOUT_S)
    except Exception as error:
        cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ClusterError(
            f"the workers of the Ray cluster at {where} cannot import ftcircuits ({cause}): ship the package "
            "with the job (python -m jobs.local_cluster submit MODULE ..., or ray job submit --working-dir . "
            '--runtime-env-json \'{"py_modules": ["platform/ftcircuits"]}\' -- ...), or install ftcircuits '
            "on the cluster's nodes"
        ) from None


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster of ``RAY_ADDRESS`` (as under ``ray job submit``) or start a local one of our own.

    Joining first checks that the address answers (``check_address_answers``: ClusterUnreachableError),
    then ships the package (``joining_runtime_env``) and checks that the workers import it (else
    ClusterError). Without ``RAY_ADDRESS`` a plain ``ray.init()`` would join any cluster already running
    on the machine (whose workers cannot import this package); ``address="local"`` never does. A local Ray
    starts its dashboard: it serves the State API, through which Ray Train's placement-group cleaner
    learns that a trainer's controller died (a Tune trial ASHA stopped) and frees its CPUs; without it
    the cleaner only warns, forever, and later trials wait for resources that never come back.

    Under a job's quiet console (``ftcircuits.console.quiet()``) the workers' output stays in their log
    files (``log_to_driver=False``; the job copies them into ``<out>/logs``), else every worker line is
    printed by the driver, prefixed with its actor and pid.
    """
    if ray.is_initialized():
        return
    address = cluster_address()
    to_driver = not console.quiet()
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=to_driver)  # fmt: skip
        return
    check_address_answers(address)
    ray.init(address=address, runtime_env=joining_runtime_env(address), log_to_driver=to_driver)
    where = ray.get_runtime_context().gcs_address
    workers = check_package_on_workers(where)
    driver = Path(sys.modules["ftcircuits"].__path__[0])
    console.say(f"Ray cluster {where}: the driver ({sys.executable}) imports ftcircuits from {driver}; "
                f"its workers ({workers['python']}) from {workers['path']}")  # fmt: skip


RAY_STORAGE_ENV = "FTCIRCUITS_RAY_STORAGE"  # Ray Train's own storage (a shared path or s3:// URI)


def alive_nodes() -> int:
    """Return how many nodes of the connected cluster are alive."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_outputs(*outputs: Path) -> None:
    """Refuse, on a cluster of more than one node, outputs that only one node's disk would hold, and an
    MLflow store that is a file on the driver's disk; on one node, accept everything.

    Run directories, checkpoints and circuits are written by Ray workers that may sit on any node, so
    they must lie under ``FTCIRCUITS_STORAGE`` (a path every node mounts: NFS, EFS, a FUSE-mounted
    bucket); rank 0 logs to MLflow from its own node, so the store must be a server
    (``MLFLOW_TRACKING_URI=http://<head>:5000``).
    """
    nodes = alive_nodes()
    if nodes <= 1:
        return
    root = storage_root()
    for out in outputs:
        path = Path(out).resolve()
        if root is None or not path.is_relative_to(root.resolve()):
            where = f"under {STORAGE_ENV}={root}" if root is not None else f"set {STORAGE_ENV}"
            raise ClusterError(
                f"{out} is on this node's disk and the cluster has {nodes} nodes, whose workers write "
                f"checkpoints and circuits there: {where} (a path every node mounts) and keep outputs "
                "under it, or give relative outputs"
            )
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ClusterError(
            f"MLflow would be a SQLite file on the driver's disk ({uri or 'the default'}) and the cluster "
            f"has {nodes} nodes, whose rank-0 workers log to it: set MLFLOW_TRACKING_URI to an MLflow server "
            "every node reaches (python -m jobs.local_cluster up starts one; ray_cluster.yaml runs one on "
            "the head)"
        )


def ray_storage_path(out: Path) -> str:
    """Return Ray Train's ``storage_path`` for a run in ``out``: under ``FTCIRCUITS_RAY_STORAGE`` (a shared
    path or an ``s3://`` URI, which Ray Train writes through pyarrow) when set, at ``out``'s path below
    the storage root (its name elsewhere), else ``<out>/ray``."""
    shared = os.environ.get(RAY_STORAGE_ENV)
    if not shared:
        return str(Path(out) / RAY_DIR)
    root, path = storage_root(), Path(out).resolve()
    below = (
        path.relative_to(root.resolve()) if root is not None and path.is_relative_to(root.resolve()) else None
    )
    return f"{shared.rstrip('/')}/{(below or Path(path.name)).as_posix()}"
