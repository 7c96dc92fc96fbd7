"""One model's circuit on one dataset split (``jobs.circuits --model --data``), written as a circuit file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ftcircuits.circuits.discover import circuit_metadata, discover_circuit
from ftcircuits.circuits.io import edges_table, write_circuit
from ftcircuits.config.discovery import CircuitJobConfig
from ftcircuits.models.loader import load_model
from ftcircuits.tasks.io import read_items, read_manifest


@dataclass(frozen=True)
class ModelCircuit:
    """A written circuit: its file, faithfulness metrics, curve (when asked) and the batch it ran in."""

    path: Path
    metrics: dict
    curve: dict | None
    batch: str  # how the batch size was chosen

    def describe(self) -> str:
        lines = [self.batch, json.dumps(self.metrics, indent=1)]
        if self.curve:
            pairs = zip(self.curve["budgets"], self.curve["faithfulness"], strict=True)
            lines.append(f"faithfulness by budget (share of edges): { {b: round(v, 3) for b, v in pairs} }")
        lines.append(f"circuit: {self.path}")
        return "\n".join(lines)


def model_circuit(
    config: CircuitJobConfig, progress: Callable[[int, int], None] | None = None
) -> ModelCircuit:
    """Discover, evaluate and write the circuit of ``config.model`` on its dataset split (on the GPU when
    there is one) to ``<out>/<dataset>-<split>-<method>-<metric>``; ``progress(done, total)`` per batch."""
    torch.set_num_threads(config.threads)
    discovery = config.discovery
    items = discovery.sample(read_items(config.data, discovery.split))
    manifest = read_manifest(config.data)
    loaded = load_model(config.model, device="cuda" if torch.cuda.is_available() else "cpu")
    attribution, selection = discovery.attribution_config(), discovery.selection_config()
    found = discover_circuit(
        loaded, items, attribution, selection, discovery.batch_size, progress, discovery.curve
    )
    meta = circuit_metadata(
        loaded, attribution, selection, found, task=manifest["task"], parameters=manifest["parameters"],
        split=discovery.split, examples=items.height, data=str(config.data), faithfulness=found.metrics,
        curve=found.curve, batch_size=found.batch.batch,
    )  # fmt: skip
    name = f"{Path(config.data).name}-{discovery.split}-{discovery.method}-{discovery.metric}"
    path = write_circuit(Path(config.out) / name, edges_table(found.scores, found.circuit, found.graph), meta)
    return ModelCircuit(path, found.metrics, found.curve, found.batch.describe())
