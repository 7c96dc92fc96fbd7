"""Shared fixtures: the tiny tokenizer, small random tiny models and their directories, hand-built
circuits, a private local Ray cluster, and a local head to submit jobs to (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import requests
import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.encoding import prompt_ids, require_answer_ids
from ftcircuits.finetune.loop import PlainStrategy, epoch_batches
from ftcircuits.finetune.methods import apply_method
from ftcircuits.finetune.schedule import TrainSettings
from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.loader import load_model
from ftcircuits.models.tiny import TinyShape, build_tiny_model
from ftcircuits.models.tokenizer import build_tiny_tokenizer
from ftcircuits.run_layout import RUN_CONFIG_FILE, checkpoint_path, index_path
from ftcircuits.tasks import build_dataset, task_family, write_dataset
from ftcircuits.tasks.build import perturbed_circuit_splits

# One torch thread in the test process: the tests' models are tiny, and two threads on a 2-core machine
# with anything else running (Ray workers, another test run) wait on each other at every op: a test of a
# second took minutes (tests/finetune/test_methods.py's DeepSpeed AdaLoRA test: 3 s with one thread, 135 s
# with two, under the same load).
torch.set_num_threads(1)
# DeepSpeed JIT-compiles a CPU comm op (deepspeed_shm_comm, a minute or more) into torch's extensions
# cache, by default one directory for every environment of the user: two virtual environments (another
# checkout's tests, CI's fresh one) rebuild it over each other at every switch, and collide. One cache per
# environment (sys.prefix), unless the user chose one; Ray workers and subprocess jobs inherit it.
ENVIRONMENT_ID = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions" / ENVIRONMENT_ID))

# what the Ray fixture sets (or Ray itself sets, RAY_AUTH_MODE) and gives back afterwards
RAY_ENVIRONMENT = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


# -- No Ray outside slow tests ------------------------------------------------------------------------
# ``-m "not slow"`` starts no Ray. A test that starts Ray (the fixtures below, ray.init, a
# ray.cluster_utils.Cluster, a subprocess job that starts Ray) is marked ``slow`` and ``ray``; in any other
# test, from the setup of its first fixture to the teardown of its last:
#  - using RAY_FIXTURES, or being marked ``ray`` without ``slow``, fails before any fixture is set up;
#  - ray.init and ray's Node (what every in-process start of a head or node, and every connection,
#    constructs) fail the test at once, with what to do (pytest's Failed: no ``except Exception`` swallows
#    it);
#  - RAY_TMPDIR is a directory of the guard's own, which subprocesses inherit: a Ray session started
#    there (a job's ``ray.init()``, a ``ray start`` without --temp-dir) fails the test at its teardown, as
#    does a Ray left initialised in this process.
# Slow tests are left alone. The cost per test is a marker lookup, three setattr calls and a glob.

RAY_FIXTURES = ("ray_cluster", "submission_cluster")
NOT_SLOW_BUT_RAY = (
    "{test} is not marked slow but {what}: a test that starts Ray (the ray_cluster or submission_cluster "
    "fixture, ray.init, ray.cluster_utils.Cluster, a subprocess job that starts Ray) is marked "
    "@pytest.mark.slow and @pytest.mark.ray, so that -m 'not slow' starts no Ray"
)
_GUARD = pytest.StashKey[tuple]()  # on a guarded test: (its patches, its refused calls, Ray was up before)
_GUARD_TMPDIR = pytest.StashKey[Path]()  # on the config: the guard's RAY_TMPDIR, made on first use


def _guard_tmpdir(config: pytest.Config) -> Path:
    if _GUARD_TMPDIR not in config.stash:
        config.stash[_GUARD_TMPDIR] = Path(tempfile.mkdtemp(prefix="no-ray-"))
    return config.stash[_GUARD_TMPDIR]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of a test: Ray fixtures need the slow and ray markers, the ray marker needs slow;
    a test not marked slow is guarded (see above)."""
    slow, marked_ray = item.get_closest_marker("slow"), item.get_closest_marker("ray")
    uses = ", ".join(name for name in RAY_FIXTURES if name in getattr(item, "fixturenames", ()))
    if uses and not slow:
        pytest.fail(NOT_SLOW_BUT_RAY.format(test=item.nodeid, what=f"uses {uses}"), pytrace=False)
    if uses and not marked_ray:
        pytest.fail(f"{item.nodeid} uses {uses}, which starts Ray: mark it @pytest.mark.ray too",
                    pytrace=False)  # fmt: skip
    if slow:
        return
    if marked_ray:
        pytest.fail(NOT_SLOW_BUT_RAY.format(test=item.nodeid, what="is marked ray"), pytrace=False)
    calls: list[tuple] = []
    patch = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        calls.append(args)
        what = "starts or joins Ray (ray.init or a Ray node)"
        pytest.fail(NOT_SLOW_BUT_RAY.format(test=item.nodeid, what=what), pytrace=False)

    patch.setenv("RAY_TMPDIR", str(_guard_tmpdir(item.config)))
    ray = sys.modules.get("ray")  # not imported for the guard: a test that imports it is seen at teardown
    if ray is not None:
        patch.setattr(ray, "init", refuse)
        patch.setattr(ray._private.worker, "init", refuse)
        patch.setattr(ray._private.node.Node, "__init__", refuse)
    item.stash[_GUARD] = (patch, calls, ray is not None and ray.is_initialized())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After a guarded test's last fixture: undo the guard, and fail the test if it started Ray."""
    guard = item.stash.get(_GUARD, None)
    found: list[str] = []
    try:
        return (yield)
    finally:
        if guard is not None:
            del item.stash[_GUARD]
            patch, calls, initialised = guard
            patch.undo()
            found = _ray_started(calls, initialised, _guard_tmpdir(item.config))
        if found:
            pytest.fail(NOT_SLOW_BUT_RAY.format(test=item.nodeid, what="; ".join(found)), pytrace=False)


def _ray_started(calls: list, initialised: bool, tmpdir: Path) -> list[str]:
    """Return what a guarded test started of Ray (and stop or remove it, so the next test starts clean)."""
    found = []
    if calls:
        found.append(f"called ray.init or made a Ray node ({len(calls)} time(s))")
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not initialised:
        ray.shutdown()
        found.append("left Ray initialised (shut down now)")
    sessions = sorted(p for p in (tmpdir / "ray").glob("session_*") if not p.is_symlink())  # not _latest
    if sessions:
        shutil.rmtree(tmpdir / "ray", ignore_errors=True)
        found.append(f"started a Ray session in RAY_TMPDIR ({', '.join(p.name for p in sessions)})")
    return found


def pytest_unconfigure(config: pytest.Config) -> None:
    if _GUARD_TMPDIR in config.stash:
        shutil.rmtree(config.stash[_GUARD_TMPDIR], ignore_errors=True)


def free_port() -> int:
    """Return a TCP port free on this machine now (a fixed one may be another test run's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store, made once: its schema's migrations take seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_out(tmp_path, _empty_mlflow_store, monkeypatch) -> Path:
    """A directory holding its own SQLite MLflow store (``<dir>/mlflow.db``, a copy of an empty one), the
    store ``tracking.mlflow_runs.tracking_uri`` picks for it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(_empty_mlflow_store, out / "mlflow.db")
    return out


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer(1000)


@pytest.fixture(scope="session")
def small_shape() -> TinyShape:
    return TinyShape(layers=2, heads=4, d_model=32, d_mlp=64)


@pytest.fixture()
def small_model(tokenizer, small_shape):
    return build_tiny_model(tokenizer, small_shape, seed=0).eval()


@pytest.fixture(scope="session")
def save_model(tokenizer) -> Callable[[object, Path], Path]:
    """Return ``save(model, directory) -> directory``: the model (anything with ``save_pretrained``)
    and the session tokenizer, written as one loadable model directory."""

    def save(model, directory: Path) -> Path:
        directory = Path(directory)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    return save


@pytest.fixture()
def model_dir(tmp_path, small_model, save_model) -> Path:
    """``small_model`` saved with the tokenizer to ``tmp_path / "base"``."""
    return save_model(small_model, tmp_path / "base")


@dataclass(frozen=True)
class HandBuiltCircuit:
    """Builds full edges tables over ``graph`` (2 layers, 2 heads, sequential blocks) by hand."""

    graph: Graph

    def __call__(
        self, members: Mapping[tuple[str, str], float], background: float | None = 0.0
    ) -> pl.DataFrame:
        """Return the edges table with ``members`` in the circuit at their scores, every other edge at
        ``background``; ``background=None`` gives every other edge a distinct score, its row number."""
        rows = self.graph.edge_names()
        scores = [members.get(e, float(i) if background is None else background) for i, e in enumerate(rows)]
        return pl.DataFrame(
            {
                "source": [s for s, _ in rows],
                "destination": [d for _, d in rows],
                "score": scores,
                "in_circuit": [e in members for e in rows],
            },
            schema={
                "source": pl.String,
                "destination": pl.String,
                "score": pl.Float32,
                "in_circuit": pl.Boolean,
            },
        )


@pytest.fixture(scope="session")
def hand_built_circuit() -> HandBuiltCircuit:
    """``circuit(members, background=0.0)``, a full edges table; its graph is ``circuit.graph``."""
    return HandBuiltCircuit(Graph(layers=2, heads=2, kv_heads=2, parallel_blocks=False))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A private local Ray cluster (2 CPUs) for the whole session; it never joins another cluster.

    ``ray.init(address="local")`` always starts a new cluster, in a short temporary directory of its own
    (Ray's unix sockets allow ~107 characters); ``RAY_ADDRESS`` is unset meanwhile, and Ray's auth token
    is a file there too (else Ray writes ``~/.ray/auth_token``). ``connect()`` in the code under test
    sees Ray initialised and uses this cluster.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray was initialised outside the ray_cluster fixture")
    saved = {name: os.environ.get(name) for name in RAY_ENVIRONMENT}
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        os.environ.pop("RAY_ADDRESS", None)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        # the dashboard serves the State API Ray Train's placement-group cleaner needs (see cluster.train)
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 _temp_dir=str(root / "ray"))  # fmt: skip
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


STALE_PACKAGE_ERROR = "this node's own ftcircuits is stale"


def stale_package(root: Path) -> str:
    """Write under ``root`` an ``ftcircuits`` whose import fails (STALE_PACKAGE_ERROR); return this
    environment's PYTHONPATH with it first: a cluster's nodes run with it, so only code shipped with a job
    runs there."""
    stale = Path(root) / "stale" / "ftcircuits"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text(f"raise ImportError({STALE_PACKAGE_ERROR!r})\n")
    return os.pathsep.join([str(stale.parent), *filter(None, [os.environ.get("PYTHONPATH")])])


def shipped_package(temp_dir: Path) -> str:
    """A pattern for ftcircuits as Ray unpacks a shipped py_module on a node of ``temp_dir``."""
    return (
        re.escape(str(temp_dir))
        + r"/session_[^/]+/runtime_resources/py_modules_files/_ray_pkg_\w+/ftcircuits"
    )


@dataclass(frozen=True)
class SubmissionCluster:
    """A Ray head as ``python -m jobs.local_cluster up`` starts it (token auth, MLflow server), whose
    nodes have a stale ``ftcircuits`` first on their PYTHONPATH: only code shipped with a job runs."""

    state: object  # jobs.local_cluster.LocalCluster
    root: Path  # the repository: the working directory submissions ship

    def client_env(self, **changes: str | None) -> dict[str, str]:
        """The submitting shell's environment (``up``'s exports), with ``changes`` (None: unset)."""
        env = {k: v for k, v in os.environ.items() if k not in RAY_ENVIRONMENT} | self.state.environment()
        for name, value in changes.items():
            env.pop(name, None) if value is None else env.__setitem__(name, value)
        return env

    def submit(
        self, module: str, args: list[str], env_vars: dict[str, str], submission_id: str,
        env: dict[str, str] | None = None, timeout: float = 900,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run ``ray job submit`` (``jobs.local_cluster.submit_command``) to the end; return its process."""
        from jobs.local_cluster import submit_command

        command = submit_command(module, args, env_vars, self.root, submission_id=submission_id)
        return subprocess.run(command, env=env or self.client_env(), cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def job(self, submission_id: str, what: str = "") -> dict:
        """GET the job's record (``what="/logs"``: its logs) from the dashboard's REST API."""
        headers = {"Authorization": f"Bearer {self.state.token_path.read_text().strip()}"}
        reply = requests.get(f"{self.state.dashboard_url}/api/jobs/{submission_id}{what}", headers=headers,
                             timeout=30)  # fmt: skip
        reply.raise_for_status()
        return reply.json()


@pytest.fixture(scope="session")
def submission_cluster() -> Iterator[SubmissionCluster]:
    """A local head with an MLflow server for the session (``jobs.local_cluster.up``, 2 CPUs), stopped by
    ``down`` (its own processes only). Its state, token and MLflow store sit in a temporary directory;
    its jobs' default FTCIRCUITS_STORAGE is ``<that>/cluster-storage``."""
    from jobs.local_cluster import down, up

    root = Path(tempfile.mkdtemp(prefix="ftc-submit-"))
    pythonpath = stale_package(root)
    try:
        state, started = up(root / "state", root / "cluster-storage", cpus=2, env={"PYTHONPATH": pythonpath})
        assert started
        yield SubmissionCluster(state, Path(__file__).resolve().parents[1])
    finally:
        down(root / "state")
        shutil.rmtree(root, ignore_errors=True)


TINY_RUN_STEPS = (0, 3, 6, 9)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer, small_shape, save_model):
    """A LoRA run of a small model on Add/Sub-100, checkpoints at TINY_RUN_STEPS, laid out as by
    jobs.finetune (its record, index and checkpoints)."""
    root = tmp_path_factory.mktemp("run")
    base = save_model(build_tiny_model(tokenizer, small_shape, seed=0), root / "base")
    family = task_family("addsub", range=100)
    items, _ = build_dataset(family, tokenizer, 160, seed=0)
    perturbed = perturbed_circuit_splits(items, family, tokenizer, [0.5], seed=1)
    data = write_dataset(root / "data" / "addsub-100", items, {"task": "addsub"}, perturbed)
    loaded = load_model(str(base))
    model = apply_method(loaded.model, loaded.architecture, MethodConfig(name="lora", r=4))
    train = items.filter(pl.col("split") == "finetune")
    ids = prompt_ids(tokenizer, train["prompt"].to_list())
    answers = require_answer_ids(tokenizer, train["prompt"].to_list(), train["answer"].to_list())
    settings = TrainSettings(total_steps=TINY_RUN_STEPS[-1], lr=2e-2, warmup_steps=1)
    strategy = PlainStrategy(model, settings)
    rows = []

    def save(step: int) -> None:
        path = save_model(model, checkpoint_path(root, step))
        rows.append({"step": step, "path": str(path), "train_loss": 0.0, "eval_accuracy": 0.0})

    save(0)
    stream = iter(epoch_batches(ids, answers, 16, 2, tokenizer.pad_token_id))
    for step in range(1, TINY_RUN_STEPS[-1] + 1):
        strategy.micro_step(next(stream))
        if step in TINY_RUN_STEPS:
            save(step)
    pl.DataFrame(rows).write_parquet(index_path(root))
    (root / RUN_CONFIG_FILE).write_text(json.dumps({"model": str(base), "data_dir": str(data)}))
    return root


# -- The jobs of the cluster tests ---------------------------------------------------------------------
# Every job argument list of the tests that run jobs on Ray (their circuit settings above all) is built
# here, so that a change of the jobs' config keys is one edit.

SMALL_RUN_STEPS = [0, 2, 3]  # the checkpoints of small_finetune_config's run


def small_finetune_config(model: str, out: str, workers: int = 1, cpus: int = 1) -> dict:
    """Return ``jobs.finetune``'s config of a LoRA (r=4) run of ``model`` into ``out``: Add/Sub-100 with 60
    items, 48 to fine-tune (3 steps of 16, split over ``workers`` of ``cpus`` CPUs each; ZeRO-2 when more
    than one), checkpoints at SMALL_RUN_STEPS."""
    return {
        "model": model,
        "task": {"name": "addsub", "range": 100, "size": 60},
        "method": {"name": "lora", "r": 4},
        "train": {"lr": 0.005, "epochs": 1, "micro_batch_size": 16 // workers, "grad_accumulation": 1,
                  "warmup_steps": 1, "checkpoint_every": 2},
        "deepspeed": {"zero_stage": 2 if workers > 1 else 0, "precision": "fp32"},
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "out": out,
    }  # fmt: skip


def circuit_settings(
    examples: int, batch_size: int, *, baselines: list[str] | None = None, robustness: bool = True,
    curve: bool = True, actors: int | None = None, cpus_per_actor: float | None = None,
) -> dict:  # fmt: skip
    """Return partial circuit settings (``CircuitRunSettings``: ``jobs.circuits --run``'s, the pipeline's
    ``circuits`` section): ``examples`` pairs in batches of ``batch_size``; robustness against ``baselines``
    (default: the config's) or none; each checkpoint's faithfulness curve or not; ``actors`` of
    ``cpus_per_actor`` CPUs (default: the config's)."""
    discovery = {"examples": examples, "batch_size": batch_size} | ({} if curve else {"curve": False})
    robust = {"enabled": robustness} | ({"baselines": baselines} if baselines is not None else {})
    pool = {"count": actors} if actors is not None else {}
    pool |= {"cpus": cpus_per_actor} if cpus_per_actor is not None else {}
    return {"discovery": discovery, "robustness": robust} | ({"actors": pool} if pool else {})


def dotted_overrides(settings: dict, prefix: str = "") -> list[str]:
    """Return a partial config as the jobs' ``--set key.path=value`` values (each value as JSON: YAML)."""
    values = []
    for key, value in settings.items():
        if isinstance(value, dict):
            values += dotted_overrides(value, f"{prefix}{key}.")
        else:
            values.append(f"{prefix}{key}={json.dumps(value)}")
    return values


def circuits_of_run_args(run: Path | str, settings: dict) -> list[str]:
    """Return ``jobs.circuits``' arguments for the circuits of every checkpoint of ``run``."""
    return ["--run", str(run), *[arg for value in dotted_overrides(settings) for arg in ("--set", value)]]


SMALL_TASK = {"name": "addsub", "range": 100, "size": 100}


def small_pipeline_args(root: Path, base_model: Path, out: str, circuits: dict) -> list[str]:
    """Write a small pipeline's presets into ``root`` (LoRA r=4 and CircuitLoRA matched to it on
    ``base_model``, one epoch of Add/Sub-100 with 100 items, one worker of one CPU per run) and return
    ``jobs.pipeline``'s arguments (``out``; ``circuits``: its circuit settings, ``circuit_settings``)."""
    import yaml

    preset, comparison = Path(root) / "preset.yaml", Path(root) / "compare.yaml"
    preset.write_text(yaml.safe_dump({
        "model": str(base_model), "task": SMALL_TASK, "method": {"name": "lora", "r": 4},
        "scaling": {"workers": 1, "cpus_per_worker": 1}, "deepspeed": {"zero_stage": 0},
        "train": {"epochs": 1, "micro_batch_size": 16, "grad_accumulation": 1, "warmup_steps": 1,
                  "checkpoint_every": 2, "lr": 0.01},
        "eval_batch_size": 64, "out": "unused",
    }))  # fmt: skip
    comparison.write_text(yaml.safe_dump({
        "finetune_config": str(preset), "reference_config": str(preset), "tasks": [SMALL_TASK], "seeds": [0],
        "arms": [{"name": "lora"},
                 {"name": "circuitlora",
                  "circuitlora": {"critical": {"k": 1}, "ranks": {"lora_r": 4, "ratio": 2.0}}}],
    }))  # fmt: skip
    return ["--set", f"out={out}", "--set", f"comparison={comparison}", "--set", f"tasks=[{SMALL_TASK}]",
            "--set", f"circuits={json.dumps(circuits)}"]  # fmt: skip


@pytest.fixture()
def browser_ready() -> None:
    """Skip unless Playwright and the system's Chromium can drive a page (``report.browser.open_page``)."""
    from ftcircuits.report.browser import PLAYWRIGHT_HINT
    from ftcircuits.report.screenshot import INSTALL_HINT, find_chromium

    if find_chromium() is None:
        pytest.skip(INSTALL_HINT)
    pytest.importorskip("playwright", reason=PLAYWRIGHT_HINT)
