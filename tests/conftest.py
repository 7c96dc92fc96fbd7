"""Shared fixtures: the tiny tokenizer, small random tiny models and their directories, hand-built
circuits, a private local Ray cluster, and a local head to submit jobs to (no network)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
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

torch.set_num_threads(2)

# what the Ray fixture sets (or Ray itself sets, RAY_AUTH_MODE) and gives back afterwards
RAY_ENVIRONMENT = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


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
    stale = root / "stale" / "ftcircuits"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text(f"raise ImportError({STALE_PACKAGE_ERROR!r})\n")
    pythonpath = os.pathsep.join([str(stale.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
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


SMALL_TASK = {"name": "addsub", "range": 100, "size": 100}
SMALL_CIRCUITS = {"discovery": {"examples": 16, "batch_size": 8}, "robustness": {"baselines": ["permuted"]}}


def small_pipeline_args(
    root: Path, base_model: Path, out: str, circuits: dict, workers: int = 1, cpus: int = 1
) -> list[str]:
    """Write a small pipeline's presets into ``root`` (LoRA r=4 and CircuitLoRA matched to it on
    ``base_model``, one epoch of Add/Sub-100 with 100 items, ``workers`` x ``cpus`` per run) and return
    ``jobs.pipeline``'s arguments (``out``; ``circuits``: its partial circuit settings)."""
    import yaml

    preset, comparison = Path(root) / "preset.yaml", Path(root) / "compare.yaml"
    preset.write_text(yaml.safe_dump({
        "model": str(base_model), "task": SMALL_TASK, "method": {"name": "lora", "r": 4},
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "deepspeed": {"zero_stage": 2 if workers > 1 else 0},
        "train": {"epochs": 1, "micro_batch_size": 16 // workers, "grad_accumulation": 1, "warmup_steps": 1,
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
