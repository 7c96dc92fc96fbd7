"""The circuits-over-a-run stage: the base's and every checkpoint's circuit (and the robustness circuits)
on Ray actors, cached on disk by what shapes them, tracked in MLflow (experiment ``circuits``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ftcircuits.cluster.circuit_pool import circuits_over_run
from ftcircuits.cluster.connection import check_shared_outputs, connect
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.console import progress, result_tables
from ftcircuits.study.over_run import (
    METRICS,
    RunInputs,
    check_unit_data,
    circuits_dir,
    finished_circuit,
    run_inputs,
    run_units,
)
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


@dataclass(frozen=True)
class RunCircuits:
    """A run's circuits: where they are, one summary row per unit, and how many were computed now."""

    directory: Path
    summary: pl.DataFrame = field(repr=False)  # key, model, step, ratio and every metric
    computed: int

    def describe(self) -> str:
        """Return the summary table and counts a person reads at the end of the stage."""
        with result_tables(tbl_width_chars=200, fmt_str_lengths=40):
            table = str(self.summary)
        done = self.summary.height - self.computed
        return f"{table}\n{self.computed} circuits computed, {done} already on disk: {self.directory}"


def circuits_logger(run: Path, settings: CircuitRunSettings, inputs: RunInputs) -> RunLogger:
    """Return a logger into a new MLflow run of the fine-tuning run's store (experiment ``circuits``)."""
    params = settings.model_dump(mode="json") | {
        "run": str(run),
        "base_model": inputs.base_model,
        "data": str(inputs.data),
    }
    uri, run_id = create_run(run, "circuits", f"{Path(run).name}-circuits", params, "circuits")
    return RunLogger(uri, run_id)


def run_circuits(run: Path, settings: CircuitRunSettings, rebuild: bool = False) -> RunCircuits:
    """Discover the circuits of ``run`` under ``settings`` that are not on disk yet, on Ray actors (joining
    or starting the cluster: ``cluster.connection.connect``), with progress; log every checkpoint's
    metrics to MLflow. Bad runs, datasets and units are refused before Ray starts; ClusterError when the
    cluster cannot hold the outputs. A damaged circuit on disk raises DamagedFileError naming it, or with
    ``rebuild`` is redone (only it, with those not on disk)."""
    inputs = run_inputs(run)
    robustness = settings.robustness
    training = robustness.enabled and "briefly-trained" in robustness.baselines
    with progress(robustness.brief_steps, "briefly-trained baseline", "step", disable=not training) as brief:
        units = run_units(run, settings, inputs, lambda step, loss: brief.update())
    check_unit_data(inputs.data, units, settings.discovery.split)  # damaged inputs stop it before Ray starts
    out = circuits_dir(run, settings, inputs)
    for unit in units:  # a damaged circuit on disk: DamagedFileError now, or with rebuild removed (redone)
        finished_circuit(out, unit, rebuild)
    connect()
    check_shared_outputs(run)
    logger = circuits_logger(run, settings, inputs)
    bar = progress(len(units), "circuits", "circuit")

    def on_result(row: dict) -> None:
        bar.set_postfix_str(f"{row['key']} faithfulness {row['faithfulness']:.2f}", refresh=False)
        bar.update(1)
        if row["step"] is not None:
            for name in METRICS:
                logger.metric(name, row[name], step=row["step"])

    out, rows, computed = circuits_over_run(run, settings, on_result, units, rebuild)
    bar.close()
    logger.artifact(out, "circuits")
    logger.finish()
    summary = pl.DataFrame(rows).select("key", "model", "step", "ratio", *METRICS)
    return RunCircuits(out, summary, computed)
