"""The circuits-over-a-run stage: the base's and every checkpoint's circuit (and the robustness circuits)
on Ray actors, cached on disk by what shapes them, tracked in MLflow (experiment ``circuits``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from ftcircuits.circuits.io import circuit_files
from ftcircuits.cluster.circuit_pool import circuits_over_run
from ftcircuits.cluster.connection import check_shared_outputs, connect
from ftcircuits.config.discovery import CircuitRunSettings, RobustnessSettings
from ftcircuits.console import progress, result_tables
from ftcircuits.study.over_run import (
    METRICS,
    RunInputs,
    check_unit_data,
    circuits_dir,
    finished_circuit,
    ground_truth_settings,
    run_inputs,
    run_units,
)
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


@dataclass(frozen=True)
class RunCircuits:
    """A run's circuits: where they are, one summary row per unit, and how many were computed now; with
    ``ground_truth``, its checkpoints' exact circuits the same way."""

    directory: Path
    summary: pl.DataFrame = field(repr=False)  # key, model, step, ratio and every metric
    computed: int
    ground_truth: RunCircuits | None = None

    def describe(self) -> str:
        """Return the summary table and counts a person reads at the end of the stage."""
        with result_tables(tbl_width_chars=200, fmt_str_lengths=40):
            table = str(self.summary)
        done = self.summary.height - self.computed
        text = f"{table}\n{self.computed} circuits computed, {done} already on disk: {self.directory}"
        if self.ground_truth is not None:
            text += f"\nground truth (exact patching) of every checkpoint:\n{self.ground_truth.describe()}"
        return text


def circuits_logger(run: Path, settings: CircuitRunSettings, inputs: RunInputs) -> RunLogger:
    """Return a logger into a new MLflow run of the fine-tuning run's store (experiment ``circuits``)."""
    params = settings.model_dump(mode="json") | {
        "run": str(run),
        "base_model": inputs.base_model,
        "data": str(inputs.data),
    }
    uri, run_id = create_run(run, "circuits", f"{Path(run).name}-circuits", params, "circuits")
    return RunLogger(uri, run_id)


def ground_truth_of(settings: CircuitRunSettings) -> CircuitRunSettings | None:
    """Return the settings of the exact circuits ``settings`` asks for besides its own (``ground_truth``),
    or None: not asked, or the method is exact already (its circuits are the ground truth)."""
    truth = ground_truth_settings(settings) if settings.ground_truth else None
    return None if truth is settings else truth


def run_circuits(run: Path, settings: CircuitRunSettings, rebuild: bool = False) -> RunCircuits:
    """Discover the circuits of ``run`` under ``settings`` that are not on disk yet, on Ray actors (joining
    or starting the cluster: ``cluster.connection.connect``), with progress; log every checkpoint's
    metrics to MLflow. With ``ground_truth``, then every checkpoint's exact circuit the same way, in its own
    directory (``over_run.ground_truth_settings``; metrics logged as ``exact_<metric>``). Bad runs, datasets
    and units are refused before Ray starts; ClusterError when the cluster cannot hold the outputs. A
    damaged circuit on disk raises DamagedFileError naming it, or with ``rebuild`` is redone (only it,
    with those not on disk)."""
    inputs = run_inputs(run)
    robustness = settings.robustness
    training = robustness.enabled and "briefly-trained" in robustness.baselines
    with progress(robustness.brief_steps, "briefly-trained baseline", "step", disable=not training) as brief:
        units = run_units(run, settings, inputs, lambda step, loss: brief.update())
    truth = ground_truth_of(settings)
    stages = [(settings, units)] + ([(truth, run_units(run, truth, inputs))] if truth else [])
    check_unit_data(inputs.data, units, settings.discovery.split)  # damaged inputs stop it before Ray starts
    todo = 0  # a damaged circuit on disk: DamagedFileError now, or with rebuild removed (redone)
    for stage, stage_units in stages:
        out = circuits_dir(run, stage, inputs)
        todo += sum(finished_circuit(out, unit, rebuild) is None for unit in stage_units)
    connect()
    check_shared_outputs(run)
    logger = circuits_logger(run, settings, inputs)
    total = sum(len(stage_units) for _, stage_units in stages)
    bar = progress(total, "circuits", "circuit", disable=todo == 0)  # all on disk: the summary says so
    found = []
    for stage, stage_units in stages:
        prefix = "exact_" if stage is truth else ""

        def on_result(row: dict, prefix: str = prefix) -> None:
            label = f"{prefix.replace('_', ' ')}{row['key']}"
            bar.set_postfix_str(f"{label} faithfulness {row['faithfulness']:.2f}", refresh=False)
            bar.update(1)
            if row["step"] is not None:
                for name in METRICS:
                    logger.metric(f"{prefix}{name}", row[name], step=row["step"])

        out, rows, computed = circuits_over_run(run, stage, on_result, stage_units, rebuild)
        logger.artifact(out, f"{prefix}circuits")
        summary = pl.DataFrame(rows).select("key", "model", "step", "ratio", *METRICS)
        found.append(RunCircuits(out, summary, computed))
    bar.close()
    logger.finish()
    return found[0] if len(found) == 1 else replace(found[0], ground_truth=found[1])


def final_checkpoint_circuit(
    run: Path,
    settings: CircuitRunSettings,
    rebuild: bool = False,
    on_result: Callable[[dict], None] | None = None,
) -> tuple[int, Path]:
    """Discover, unless it is on disk, the circuit of ``run``'s final checkpoint under ``settings``'
    discovery (no robustness unit, no ground truth) on a Ray actor, calling ``on_result`` with its summary
    row; return (its step, its circuit file stem). It is cached with ``run_circuits``' circuits of the same
    settings (``<run>/circuits/<hash>``): e.g. a CircuitLoRA run's final circuit, set beside the studied
    run's in the explorer. A damaged file on disk raises DamagedFileError naming it, or with ``rebuild`` is
    redone. One computed now is logged to the run's MLflow store (experiment ``circuits``)."""
    inputs = run_inputs(run)
    alone = settings.model_copy(
        update={"robustness": RobustnessSettings(enabled=False), "ground_truth": False}
    )
    final = run_units(run, alone, inputs)[-1]  # the checkpoint units, in step order
    if finished_circuit(circuits_dir(run, alone, inputs), final, rebuild) is None:
        connect()
    out, (row,), computed = circuits_over_run(run, alone, on_result, [final], rebuild)
    if computed:  # tracked like run_circuits' circuits: its metrics and files in the run's store
        logger = circuits_logger(run, alone, inputs)
        for name in METRICS:
            logger.metric(name, row[name], step=final.step)
        for path in circuit_files(out / final.key):
            logger.artifact(path, "circuits")
        logger.finish()
    return int(final.step), out / final.key
