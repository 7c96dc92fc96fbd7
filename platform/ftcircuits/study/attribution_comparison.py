"""Which attribution method the study should use: every (method, intervention) pair on a fine-tuning run's
base (step 0) and final checkpoint, in one process (no Ray: times are comparable).

A cell is one (checkpoint, method, intervention). Each discovers its circuit (timed: wall and CPU seconds,
model load and weight swap excluded), then its faithfulness curve over ``budgets`` (MIB's CPR and CMD:
the curve's ``area`` and ``area_abs_gap``), and is written as a circuit file (edges table + JSON, atomic)
to ``<out>/cells/<key>/<cell>``, so a rerun reuses it. Agreement with exact patching is computed last, from
the cells' tables: each method against ``exact`` under the same checkpoint and intervention (the curve
and the scores both depend on the intervention, so methods compare within one).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl
import torch

from ftcircuits.circuits.compare import AGREEMENT_TOP, score_agreement
from ftcircuits.circuits.discover import discover_circuit, discovery_batches
from ftcircuits.circuits.evaluation import faithfulness_curve
from ftcircuits.circuits.interventions import source_means
from ftcircuits.circuits.io import (
    checked_circuit_meta,
    circuit_exists,
    edges_table,
    read_circuit,
    write_circuit,
)
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.config.attribution import AttributionCompareConfig
from ftcircuits.console import progress, say
from ftcircuits.models.loader import load_model
from ftcircuits.models.swap import CheckpointWeights
from ftcircuits.options import AttributionMethod, Intervention
from ftcircuits.paths import atomic_file
from ftcircuits.report.attribution_figures import attribution_curves
from ftcircuits.study.over_run import RunInputs, run_inputs
from ftcircuits.tasks.io import read_items, read_manifest

TRUTH: AttributionMethod = "exact"
CELL_FORMAT = 1  # in the cells' key: cells written by an older format are recomputed
CELLS_DIR = "cells"
TABLE_FILE, MARKDOWN_FILE, FIGURE_FILE = "attribution.parquet", "attribution.md", "attribution.png"
AGREEMENT = ("pearson", "spearman", "top_overlap")


@dataclass(frozen=True)
class Cell:
    """One circuit of the comparison: a checkpoint's weights under one method and intervention."""

    checkpoint: str  # "base" (step 0) or "final" (the run's last checkpoint)
    step: int
    weights: str  # the checkpoint's directory
    method: AttributionMethod
    intervention: Intervention

    @property
    def key(self) -> str:
        return f"{self.checkpoint}-{self.method}-{self.intervention}"


def comparison_cells(config: AttributionCompareConfig, inputs: RunInputs) -> tuple[list[Cell], list[str]]:
    """Return the cells of ``config`` (its checkpoints, base then final; interventions, then methods, in the
    config's order) and a note per (method, intervention) pair skipped because the method cannot take the
    intervention."""
    index = inputs.checkpoints.sort("step")
    ends = {"base": index.row(0, named=True), "final": index.row(-1, named=True)}
    pairs, notes = config.pairs()
    cells = [
        Cell(name, int(row["step"]), str(row["path"]), method, intervention)
        for name, row in ends.items()
        if name in config.checkpoints
        for method, intervention in pairs
    ]
    return cells, notes


def cells_dir(config: AttributionCompareConfig, inputs: RunInputs) -> Path:
    """Return where the cells of ``config`` live: ``<out>/cells/<hash>`` of what shapes a cell (the shared
    discovery settings but method and intervention, the budgets, the run and its dataset's content)."""
    discovery = config.discovery.model_dump(mode="json", exclude={"method", "intervention", "curve"})
    payload = {
        "discovery": discovery,
        "budgets": config.budgets,
        "run": inputs.identity,
        "data": read_manifest(inputs.data).get("content_hash"),
        "format": CELL_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return Path(config.out) / CELLS_DIR / digest


class CellRunner:
    """Discovers cells on one base model, loaded once, into which each cell's checkpoint is swapped."""

    def __init__(self, config: AttributionCompareConfig, inputs: RunInputs, out: Path) -> None:
        torch.set_num_threads(config.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.weights = CheckpointWeights(load_model(inputs.base_model, device=device))
        self.items = config.discovery.sample(read_items(inputs.data, config.discovery.split))
        self.config, self.out = config, Path(out)

    def run(self, cell: Cell) -> dict:
        """Discover, time, evaluate over the budgets and write ``cell``; return its JSON metadata."""
        self.weights.swap_to(cell.weights)
        loaded, discovery = self.weights.loaded, self.config.discovery
        attribution = replace(
            discovery.attribution_config(), method=cell.method, intervention=cell.intervention
        )
        selection = discovery.selection_config()
        wall, cpu = time.perf_counter(), time.process_time()
        found = discover_circuit(loaded, self.items, attribution, selection, discovery.batch_size)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        curve_start = time.perf_counter()
        probe = ModelProbe(loaded.model, loaded.architecture)
        batches, _ = discovery_batches(loaded, self.items, attribution, found.batch.batch)
        means = source_means(probe, batches) if cell.intervention == "mean" else None
        curve = faithfulness_curve(probe, batches, found.scores, attribution.metric, self.config.budgets,
                                   selection.method, cell.intervention, means)  # fmt: skip
        meta = {
            "cell": asdict(cell),
            "attribution": asdict(attribution),
            "selection": asdict(selection),
            "examples": self.items.height,
            "batch_size": found.batch.batch,
            "metrics": found.metrics,
            "curve": curve,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "curve_seconds": time.perf_counter() - curve_start,
            "threads": torch.get_num_threads(),
        }
        write_circuit(self.out / cell.key, edges_table(found.scores, found.circuit, found.graph), meta)
        return meta


def finished_cell(out: Path, cell: Cell) -> bool:
    """Return whether ``cell`` is on disk, checked (DamagedFileError names a damaged file)."""
    stem = Path(out) / cell.key
    if not circuit_exists(stem):
        return False
    checked_circuit_meta(stem, f"delete {stem}.* and rerun python -m jobs.compare_attribution")
    return True


def cell_row(meta: dict) -> dict:
    """Return a cell's row of the table (its agreement columns added later)."""
    curve = meta["curve"]
    return {
        **{k: meta["cell"][k] for k in ("checkpoint", "step", "method", "intervention")},
        "cpr": curve["area"],
        "cmd": curve["area_abs_gap"],
        "faithfulness": meta["metrics"]["faithfulness"],
        "budgets": curve["budgets"],
        "faithfulness_by_budget": curve["faithfulness"],
        "seconds": meta["seconds"],
        "cpu_seconds": meta["cpu_seconds"],
        "curve_seconds": meta["curve_seconds"],
        "edges_in_circuit": meta["metrics"]["edges_in_circuit"],
        "batch_size": meta["batch_size"],
    }


def comparison_table(out: Path, cells: list[Cell]) -> pl.DataFrame:
    """Return one row per cell, read back from ``out``, with ``pearson``, ``spearman`` and ``top_overlap``
    against the exact cell of the same checkpoint and intervention (null where there is none)."""
    tables, rows = {}, []
    for cell in cells:
        tables[cell.key], meta = read_circuit(Path(out) / cell.key)
        rows.append(cell_row(meta))
    for cell, row in zip(cells, rows, strict=True):
        truth = tables.get(replace(cell, method=TRUTH).key)
        agreement = score_agreement(tables[cell.key], truth) if truth is not None else {}
        row |= {name: agreement.get(name) for name in AGREEMENT}
    schema_overrides = {name: pl.Float64 for name in AGREEMENT}
    return pl.DataFrame(rows, schema_overrides=schema_overrides)


def attribution_markdown(table: pl.DataFrame, budget: float, notes: list[str]) -> str:
    """Return the table as markdown: per checkpoint, intervention and method, CPR, CMD, faithfulness at the
    circuit's budget, agreement with exact, and seconds per circuit (wall, CPU)."""

    def number(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    top = f"top-{100 * AGREEMENT_TOP:g}%"
    lines = [
        f"| checkpoint | intervention | method | CPR ↑ | CMD ↓ | faithfulness at {100 * budget:g}% | "
        f"pearson | spearman | {top} overlap | seconds | CPU seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.iter_rows(named=True):
        lines.append(
            f"| {row['checkpoint']} (step {row['step']}) | {row['intervention']} | {row['method']} "
            f"| {number(row['cpr'])} | {number(row['cmd'])} | {number(row['faithfulness'])} "
            f"| {number(row['pearson'])} | {number(row['spearman'])} | {number(row['top_overlap'], 2)} "
            f"| {number(row['seconds'], 1)} | {number(row['cpu_seconds'], 1)} |"
        )
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]).rstrip() + "\n"


@dataclass(frozen=True)
class AttributionComparison:
    """The comparison's table (one row per cell), its markdown, the skipped pairs and where it is written."""

    table: pl.DataFrame = field(repr=False)
    markdown: str
    notes: list[str]
    out: Path
    figure: Path
    computed: int  # cells discovered by this call
    reused: int  # cells found on disk

    def describe(self) -> str:
        return (
            f"{self.markdown}\n{self.computed} cells computed, {self.reused} reused\n"
            f"table: {self.out / TABLE_FILE}; markdown: {self.out / MARKDOWN_FILE}; figure: {self.figure}"
        )


def compare_attribution(config: AttributionCompareConfig) -> AttributionComparison:
    """Discover every cell of ``config`` not yet on disk (the run's files checked first: DamagedFileError),
    then write ``attribution.parquet``, ``attribution.md`` and ``attribution.png`` to ``config.out``."""
    inputs = run_inputs(config.run)
    cells, notes = comparison_cells(config, inputs)
    if TRUTH not in config.methods:
        notes.append(f"{TRUTH} is not among the methods: no agreement columns")
    directory = cells_dir(config, inputs)
    todo = [cell for cell in cells if not finished_cell(directory, cell)]
    say(f"== {len(cells)} cells ({len(cells) - len(todo)} on disk) in {directory}")
    if todo:
        runner = CellRunner(config, inputs, directory)
        bar = progress(len(todo), "attribution cells", unit="cell")
        for cell in todo:
            meta = runner.run(cell)
            bar.set_postfix_str(f"{cell.key} cpr {meta['curve']['area']:.3f} {meta['seconds']:.1f}s")
            bar.update()
        bar.close()
    table = comparison_table(directory, cells)
    markdown = attribution_markdown(table, config.discovery.budget, notes)
    out = Path(config.out)
    with atomic_file(out / TABLE_FILE) as tmp:
        table.write_parquet(tmp)
    with atomic_file(out / MARKDOWN_FILE) as tmp:
        tmp.write_text(markdown)
    figure = attribution_curves(table, out / FIGURE_FILE)
    return AttributionComparison(table, markdown, notes, out, figure, len(todo), len(cells) - len(todo))
