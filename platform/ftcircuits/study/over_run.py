"""Circuits over a fine-tuning run: one unit per checkpoint (and per robustness variant), keyed on disk.

Plain Python, no Ray: ``CircuitRunner`` holds the base model once and swaps in
each unit's weights; ``cluster.circuit_pool`` runs it inside long-lived actors,
and a sequential loop over the same runner gives the same circuits. Every
circuit is written to ``<run>/circuits/<settings hash>/<key>`` (JSON last), so a
finished unit is recognised and skipped by a rerun. A finished unit is checked
before reuse (``finished_circuit``): a damaged one stops the stage with
``DamagedFileError``, or with ``rebuild`` is redone; a unit whose JSON or edges
file was deleted is redone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import torch

from ftcircuits.circuits.discover import circuit_metadata, discover_circuit
from ftcircuits.circuits.io import (
    checked_circuit_meta,
    circuit_exists,
    circuit_files,
    edges_table,
    read_circuit,
    write_circuit,
)
from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.config.discovery import CircuitRunSettings, RobustnessSettings
from ftcircuits.integrity import DamagedFileError, read_parquet_checked
from ftcircuits.models.loader import ModelSourceError, check_model_files, load_model, resolve_model_source
from ftcircuits.models.swap import BASE, PERMUTED_PREFIX, RANDOM_PREFIX, SCALED_PREFIX, CheckpointWeights
from ftcircuits.options import Baseline, ModelKind
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import (
    CIRCUITS_DIR,
    check_run,
    checkpoint_name,
    read_checkpoint_index,
    read_run_record,
)
from ftcircuits.study.baselines import briefly_trained_baseline
from ftcircuits.tasks.io import read_items, read_manifest, read_perturbed

SUMMARY_FILE = "summary.parquet"
METRICS = ("faithfulness", "faithfulness_paper", "circuit_accuracy", "model_accuracy", "input_kl",
           "score_std", "edges_in_circuit", "nodes_in_circuit")  # fmt: skip
CIRCUIT_FORMAT = 2  # in the output key: circuits written before the metrics above are recomputed
BASELINE_WEIGHTS = {"random-init": RANDOM_PREFIX, "random-scaled": SCALED_PREFIX, "permuted": PERMUTED_PREFIX}


@dataclass(frozen=True)
class CircuitUnit:
    """One circuit to discover over a run: which weights, on which variant of the circuit split."""

    key: str  # file stem of the circuit, unique within a run's settings
    weights: str  # a checkpoint directory, "base" or a baseline's "<prefix>SEED" (models.swap)
    model: ModelKind
    step: int | None = None  # the checkpoint's optimiser step
    ratio: float = 0.0  # share of items replaced (0: the unperturbed split)


@dataclass(frozen=True)
class RunInputs:
    """What a fine-tuning run's circuits need: its base model, dataset and checkpoints."""

    base_model: str
    data: Path
    checkpoints: pl.DataFrame  # step, path, train_loss, eval_accuracy
    identity: str  # hash of the run's config and dataset: another run in the same place gets new circuits


def local_model_dir(source: str) -> list[str]:
    """Return ``source``'s model directory when it is one on this machine (else nothing: a hub id)."""
    try:
        resolved = resolve_model_source(source)
    except ModelSourceError:
        return []  # named where it is loaded
    return [resolved] if Path(resolved).is_dir() else []


def run_inputs(run: Path) -> RunInputs:
    """Return the base model, dataset and checkpoint index of a run written by ``jobs.finetune``; check the
    index, the base model's and every checkpoint's files first (DamagedFileError names a damaged one, before
    any work)."""
    check_run(run)
    config = read_run_record(run)
    index = read_checkpoint_index(run)
    for path in [*local_model_dir(config["model"]), *index["path"]]:
        check_model_files(Path(path))
    config.pop("mlflow_run", None)  # a resumed run is the same run
    identity = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return RunInputs(config["model"], Path(config["data_dir"]), index, identity)


def circuit_key(settings: CircuitRunSettings) -> dict:
    """Return every setting that changes the circuit of some unit of a run: the whole discovery, and the
    baselines' seed and the briefly-trained baseline's training steps. Left out, because they only choose
    which units exist (each unit's key names what it is of): ``robustness.enabled``, ``baselines`` and
    ``ratios``; how the work is spread (``actors``), which changes no circuit; and ``ground_truth``, whose
    exact circuits are cached apart (``ground_truth_settings``)."""
    robustness = settings.robustness
    return {
        "discovery": settings.discovery.model_dump(mode="json"),
        "random_seed": robustness.random_seed,
        "brief_steps": robustness.brief_steps,
    }


def ground_truth_settings(settings: CircuitRunSettings) -> CircuitRunSettings:
    """Return the settings of a run's ground-truth circuits: ``settings``' discovery (items, sample,
    intervention, metric, batch, selection, budget, curve) with ``method="exact"``, of every checkpoint and
    no robustness unit, so they live in a ``<run>/circuits/<hash>`` of their own; ``settings`` itself when
    its method is exact already (its circuits are their own ground truth)."""
    if settings.discovery.method == "exact":
        return settings
    discovery = DiscoverySettings(**{**settings.discovery.model_dump(), "method": "exact"})
    return CircuitRunSettings(
        discovery=discovery, robustness=RobustnessSettings(enabled=False), actors=settings.actors
    )


def settings_hash(settings: CircuitRunSettings, inputs: RunInputs) -> str:
    """Return a short hash of what shapes a run's circuits (``circuit_key``), the run and its dataset's
    content: the output key."""
    payload = {
        "settings": circuit_key(settings),
        "format": CIRCUIT_FORMAT,
        "run": inputs.identity,
        "data": read_manifest(inputs.data).get("content_hash"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def circuits_dir(run: Path, settings: CircuitRunSettings, inputs: RunInputs) -> Path:
    """Return where the circuits of ``run`` under ``settings`` live: ``<run>/circuits/<hash>``."""
    return Path(run) / CIRCUITS_DIR / settings_hash(settings, inputs)


def circuit_units(
    inputs: RunInputs,
    robustness: bool,
    random_seed: int = 0,
    baselines: tuple[Baseline, ...] = ("random-init", "random-scaled", "permuted"),
    briefly_trained: Path | None = None,
    ratios: tuple[float, ...] | None = None,
) -> list[CircuitUnit]:
    """Return a unit per checkpoint, and with ``robustness`` per (base | each baseline, ratio).

    The briefly-trained baseline's weights are the model directory ``briefly_trained``
    (``study.baselines.briefly_trained_baseline``), required when it is among ``baselines``. ``ratios``
    picks perturbation ratios among the dataset's (default: all of them).
    """
    units = [
        CircuitUnit(checkpoint_name(step), str(path), "checkpoint", step)
        for step, path in inputs.checkpoints.select("step", "path").iter_rows()
    ]
    if robustness:
        available = sorted(float(r) for r in read_manifest(inputs.data).get("perturbed", {}))
        if not available:
            raise ValueError(f"robustness needs perturbed variants of {inputs.data}; it has none")
        missing = sorted(set(ratios or ()) - set(available))
        if missing:
            raise ValueError(
                f"robustness ratios {missing} are not among {inputs.data}'s variants {available}"
            )
        ratios = sorted(ratios) if ratios else available
        if "briefly-trained" in baselines and briefly_trained is None:
            raise ValueError("the briefly-trained baseline needs its model directory (briefly_trained)")
        seed = random_seed
        variants = [("base", "base", BASE)] + [
            (kind, f"{kind}-seed{seed}",
             str(briefly_trained) if kind == "briefly-trained" else f"{BASELINE_WEIGHTS[kind]}{seed}")
            for kind in baselines
        ]  # fmt: skip
        for model, stem, weights in variants:
            units += [CircuitUnit(f"{stem}-p{r:.2f}", weights, model, None, r) for r in [0.0, *ratios]]
    return units


def run_units(
    run: Path,
    settings: CircuitRunSettings,
    inputs: RunInputs,
    on_step: Callable[[int, float], None] | None = None,
) -> list[CircuitUnit]:
    """Return the units of ``settings`` over ``run``, first training the briefly-trained baseline (cached
    under ``<run>/circuits/baselines``) when robustness compares against it."""
    robustness, trained = settings.robustness, None
    if robustness.enabled and "briefly-trained" in robustness.baselines:
        root = Path(run) / CIRCUITS_DIR / "baselines"
        trained = briefly_trained_baseline(inputs.base_model, root, robustness.brief_steps,
                                           robustness.random_seed, on_step)  # fmt: skip
    ratios = tuple(robustness.ratios) if robustness.ratios else None
    return circuit_units(
        inputs, robustness.enabled, robustness.random_seed, tuple(robustness.baselines), trained, ratios
    )


def circuit_rebuild_hint(out: Path, damaged: Path) -> str:
    """Return how to redo a run's damaged circuit file ``damaged`` (in ``out``, ``<run>/circuits/<hash>``)."""
    run = Path(out).parent.parent
    return (
        f"rerun with --set rebuild=true, or delete {damaged}: python -m jobs.circuits --run {run} "
        "(with the same --set settings; every job that runs this stage takes --set rebuild=true)"
    )


def _with_hint(out: Path, error: DamagedFileError) -> DamagedFileError:
    return DamagedFileError(error.path, error.problem, circuit_rebuild_hint(out, error.path))


def finished_circuit(out: Path, unit: CircuitUnit, rebuild: bool = False) -> dict | None:
    """Return the summary row of a unit whose circuit is already on disk, checked, else None (to do).

    A unit with its JSON or edges file missing (deleted) is to do. A damaged one (``checked_circuit_meta``)
    raises DamagedFileError naming the file and how to redo it, or with ``rebuild`` has its files removed
    and is to do."""
    stem = Path(out) / unit.key
    if not circuit_exists(stem):
        return None
    try:
        meta = checked_circuit_meta(stem)
        try:
            return summary_row(unit, meta)
        except (KeyError, TypeError, ValueError) as error:
            meta_path = circuit_files(stem)[1]
            raise DamagedFileError(
                meta_path, f"its faithfulness metrics are missing or malformed ({error!r})", ""
            ) from None
    except DamagedFileError as error:
        if not rebuild:
            raise _with_hint(out, error) from None
        for path in circuit_files(stem):
            path.unlink(missing_ok=True)
        return None


def check_unit_data(data: Path, units: list[CircuitUnit], split: str) -> None:
    """Read, checked, the dataset files ``units`` use (the split, each perturbed ratio), so that a damaged one
    stops the stage with DamagedFileError before any actor starts."""
    read_items(data, split)
    for ratio in sorted({unit.ratio for unit in units} - {0.0}):
        read_perturbed(data, ratio)


def read_run_circuit(out: Path, key: str) -> tuple[pl.DataFrame, dict]:
    """Return the edges table and metadata of a run's circuit ``key`` in ``out``, checked
    (``circuits.io.read_circuit``; a damaged file names how to redo it)."""
    try:
        return read_circuit(Path(out) / key)
    except DamagedFileError as error:
        raise _with_hint(out, error) from None


def summary_row(unit: CircuitUnit, meta: dict) -> dict:
    return {**asdict(unit), **{m: float(meta["faithfulness"][m]) for m in METRICS}}


class CircuitRunner:
    """Discovers the circuits of units on one base model, loaded once; writes each atomically."""

    def __init__(self, base_model: str, data: Path, settings: DiscoverySettings, out: Path) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.weights = CheckpointWeights(load_model(base_model, device=device))
        self.data, self.settings, self.out = Path(data), settings, Path(out)
        self.attribution = settings.attribution_config()
        self.selection = settings.selection_config()

    def items(self, ratio: float) -> pl.DataFrame:
        items = read_items(self.data, self.settings.split) if ratio == 0 else read_perturbed(self.data, ratio)
        return self.settings.sample(items)

    def run(self, unit: CircuitUnit) -> dict:
        """Discover, evaluate and write the circuit of ``unit``; return its summary row."""
        self.weights.swap_to(unit.weights)
        loaded = self.weights.loaded
        items = self.items(unit.ratio)
        settings = self.settings
        curve = settings.curve and unit.model == "checkpoint"  # faithfulness against budget per checkpoint
        found = discover_circuit(
            loaded, items, self.attribution, self.selection, settings.batch_size, curve=curve
        )
        meta = circuit_metadata(
            loaded, self.attribution, self.selection, found, unit=asdict(unit), split=self.settings.split,
            examples=items.height, data=str(self.data), faithfulness=found.metrics, curve=found.curve,
            batch_size=found.batch.batch,
        )  # fmt: skip
        write_circuit(self.out / unit.key, edges_table(found.scores, found.circuit, found.graph), meta)
        return summary_row(unit, meta)


def write_summary(out: Path, rows: list[dict]) -> Path:
    """Write the summary table of a run's circuits (one row per unit), sorted by model, step, ratio.

    ``rows`` are the units of this call; the rows of other units already in the table whose circuits are
    still on disk are kept (a later call over fewer units, as CircuitLoRA's reference circuits with
    robustness off, shares the directory and must not drop the robustness rows). A damaged old table is
    replaced."""
    frame = pl.DataFrame(rows)
    path = Path(out) / SUMMARY_FILE
    if path.is_file():
        try:
            old = read_parquet_checked(path, "", {"key": pl.String})
        except DamagedFileError:
            old = None
        if old is not None:
            kept = [
                key for key in old["key"] if key not in set(frame["key"]) and circuit_exists(Path(out) / key)
            ]
            frame = pl.concat([frame, old.filter(pl.col("key").is_in(kept))], how="diagonal_relaxed")
    frame = frame.sort("model", "step", "ratio", nulls_last=True)
    with atomic_file(path) as tmp:
        frame.write_parquet(tmp)
    return path
