"""The interactive circuit explorer: one self-contained HTML page (its data and script inline, no network)
that draws a run's circuit at every checkpoint on a fixed layout, on a ``<canvas>``.

A pure renderer, like ``report.html``: the study layer gathers an ``ExplorerData`` from a run's circuit
files (``study.explorer``) and ``render_explorer`` writes the page. Arrays travel as little-endian
base64 (float32 scores, uint32 edge indices), so 231,493 edges of scores per checkpoint stay ~1.2 MB.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftcircuits.paths import atomic_file

ASSET_DIR = Path(__file__).resolve().parent
SCRIPTS = tuple(ASSET_DIR / f"{name}.js" for name in
                ("explorer", "explorer_draw", "explorer_panel", "explorer_controls"))  # fmt: skip
STYLE = ASSET_DIR / "explorer.css"
PARTS = ("", "q", "k", "v")  # an edge's destination input: none (an MLP, the logits) or a head's q, k, v


@dataclass(frozen=True)
class Snapshot:
    """One circuit's scores and its circuits at each budget: a checkpoint of the studied run (on the
    slider) or another model's circuit (``step`` None: side-by-side only, e.g. a CircuitLoRA run's final)."""

    label: str
    step: int | None
    scores: np.ndarray  # float32 [n_edges], in ExplorerData's edge order
    node_scores: np.ndarray  # float32 [n_nodes] (NaN where a node has none: logits)
    circuits: dict[float, np.ndarray]  # budget -> sorted uint32 edge indices in the circuit
    exact_scores: np.ndarray | None = None  # ground truth (exact patching), same order; None: not computed
    exact_node_scores: np.ndarray | None = None


@dataclass(frozen=True)
class ExplorerData:
    """What the page shows: the graph (nodes with their layer and head, edges as node indices), the
    snapshots, the budgets (``budget``: the one the circuit files were selected at) and the critical
    layers (rule -> layer-score variant -> layers)."""

    title: str
    layers: int
    heads: int
    node_names: list[str]
    node_layer: np.ndarray  # int [n_nodes]: -1 input, 0..layers-1, layers for logits
    node_head: np.ndarray  # int [n_nodes]: the head, -1 for input, an MLP, logits
    edge_source: np.ndarray  # uint16 [n_edges]: node index
    edge_destination: np.ndarray  # uint16 [n_edges]: node index (q/k/v collapsed into the head)
    edge_part: np.ndarray  # uint8 [n_edges]: index into PARTS
    snapshots: list[Snapshot]
    budgets: list[float]
    budget: float
    selection: str  # how the circuits were selected, shown on the page
    critical: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    similarity: list[dict] = field(default_factory=list)  # the analysis' similarity rows, shown per step

    def __post_init__(self) -> None:
        n_nodes, n_edges = len(self.node_names), len(self.edge_source)
        if not (len(self.edge_destination) == len(self.edge_part) == n_edges):
            raise ValueError("edge_source, edge_destination and edge_part differ in length")
        if len(self.node_layer) != n_nodes or len(self.node_head) != n_nodes:
            raise ValueError("node_layer and node_head must have one entry per node name")
        if self.budget not in self.budgets:
            raise ValueError(f"the circuit files' budget {self.budget} is not among {self.budgets}")
        if not any(s.step is not None for s in self.snapshots):
            raise ValueError("the explorer needs at least one checkpoint snapshot (with a step)")
        for snap in self.snapshots:
            if len(snap.scores) != n_edges or len(snap.node_scores) != n_nodes:
                sizes = f"{len(snap.scores)} edges and {len(snap.node_scores)} nodes"
                graph = f"{n_edges} and {n_nodes}"
                raise ValueError(f"snapshot {snap.label}: scores of {sizes}, the graph has {graph}")
            if sorted(snap.circuits) != sorted(self.budgets):
                raise ValueError(f"snapshot {snap.label}: circuits at {sorted(snap.circuits)}, "
                                 f"budgets are {self.budgets}")  # fmt: skip


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _circuit(indices: np.ndarray, n_edges: int) -> dict[str, str]:
    """Return a circuit's edges as the smaller of sorted uint32 indices and a bitmask over every edge
    (little bit order): beyond 1/32 of the edges the mask is smaller."""
    indices = np.sort(indices)
    if 32 * len(indices) <= n_edges:
        return {"indices": _b64(indices, "<u4")}
    mask = np.zeros(n_edges, dtype=bool)
    mask[indices] = True
    return {"bits": base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode("ascii")}


def _optional(array: np.ndarray | None, dtype: str) -> str | None:
    return None if array is None else _b64(array, dtype)


def page_payload(data: ExplorerData) -> dict:
    """Return the page's JSON payload: plain values, arrays as little-endian base64."""
    return {
        "title": data.title,
        "layers": data.layers,
        "heads": data.heads,
        "nodes": data.node_names,
        "nodeLayer": [int(v) for v in data.node_layer],
        "nodeHead": [int(v) for v in data.node_head],
        "edges": len(data.edge_source),
        "edgeSource": _b64(data.edge_source, "<u2"),
        "edgeDestination": _b64(data.edge_destination, "<u2"),
        "edgePart": _b64(data.edge_part, "u1"),
        "parts": list(PARTS),
        "budgets": data.budgets,
        "budget": data.budget,
        "selection": data.selection,
        "critical": data.critical,
        "similarity": data.similarity,
        "snapshots": [
            {
                "label": s.label,
                "step": s.step,
                "scores": _b64(s.scores, "<f4"),
                "nodeScores": _b64(s.node_scores, "<f4"),
                "circuits": [_circuit(s.circuits[b], len(data.edge_source)) for b in data.budgets],
                "exactScores": _optional(s.exact_scores, "<f4"),
                "exactNodeScores": _optional(s.exact_node_scores, "<f4"),
            }
            for s in data.snapshots
        ],
    }


def _script_json(payload: dict) -> str:
    """Return JSON safe inside a ``<script>`` element (no ``</``, no HTML comment opener)."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page_script() -> str:
    """Return the page's script: its parts joined inside one function scope, in strict mode."""
    parts = "\n".join(path.read_text() for path in SCRIPTS)
    return f'(function () {{\n"use strict";\n{parts}}})();\n'


def explorer_html(data: ExplorerData) -> str:
    """Return the explorer page: markup, the inline style and script, and the data as inline JSON."""
    title = html.escape(data.title)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: circuit explorer</title>
<style>{STYLE.read_text()}</style></head>
<body>
<header>
 <h1>{title}</h1>
 <div class="controls">
  <button id="play" type="button" title="play the checkpoints">&#9654;</button>
  <label>checkpoint <input id="step" type="range" min="0" value="0" step="1"></label>
  <output id="step-label"></output>
  <label>budget <select id="budget"></select></label>
  <label>shown <select id="shown"></select></label>
  <label>compared with <select id="reference"></select></label>
  <label><input id="side" type="checkbox"> side by side</label>
  <label>critical layers <select id="critical"></select></label>
  <label><input id="aggregate" type="checkbox"> heads by layer</label>
 </div>
 <p id="status"></p>
</header>
<main>
 <div id="views">
  <figure id="view-a" hidden><figcaption></figcaption><canvas></canvas></figure>
  <figure id="view-b"><figcaption></figcaption><canvas></canvas></figure>
 </div>
 <aside id="panel"><p>Click a node or an edge.</p></aside>
</main>
<footer id="legend">edges: width by |score|, <span class="pos">positive</span> /
 <span class="neg">negative</span>; <span class="added">added</span> and
 <span class="removed">removed</span> against the compared circuit at the same budget; nodes: filled in the
 circuit, <span class="added">ring: added</span>, <span class="removed">ring: removed</span>; shaded rows:
 critical layers.</footer>
<script id="explorer-data" type="application/json">{_script_json(page_payload(data))}</script>
<script>{page_script()}</script>
</body></html>
"""


def render_explorer(data: ExplorerData, out: Path) -> Path:
    """Write the explorer page to ``out`` (atomically) and return its path."""
    with atomic_file(Path(out)) as tmp:
        tmp.write_text(explorer_html(data))
    return Path(out)
