"""Shared fixtures: the tiny tokenizer, small random tiny models and their directories, hand-built
circuits, and a private local Ray cluster (no network)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.models.tiny import TinyShape, build_tiny_model
from ftcircuits.models.tokenizer import build_tiny_tokenizer

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
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(root / "ray"))
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)
