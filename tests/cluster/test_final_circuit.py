"""One run's final circuit on a real local Ray (``final_checkpoint_circuit``: what the pipeline sets beside
the studied run in the explorer, for each CircuitLoRA arm): it is the circuit ``run_circuits`` finds for that
checkpoint under the same settings, cached with them, and reused by both."""

from __future__ import annotations

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.circuits.io import circuit_files, read_circuit
from ftcircuits.cluster.run_circuits import final_checkpoint_circuit, run_circuits
from ftcircuits.config.discovery import CircuitRunConfig
from ftcircuits.config.loading import load_config
from ftcircuits.study.over_run import SUMMARY_FILE, circuits_dir, run_inputs
from ftcircuits.tracking.mlflow_runs import tracking_uri
from tests.conftest import TINY_RUN_STEPS, circuit_settings, dotted_overrides

SETTINGS = circuit_settings(8, 8, robustness=False, curve=False)
SETTINGS["discovery"]["sample_seed"] = 11  # a sample of its own: no other test has these circuits on disk


@pytest.mark.ray
@pytest.mark.slow
def test_the_final_circuit_is_run_circuits_one_and_shares_its_cache(ray_cluster, tiny_run):
    settings = load_config(CircuitRunConfig, None, [f"run={tiny_run}", *dotted_overrides(SETTINGS)])
    out = circuits_dir(tiny_run, settings, run_inputs(tiny_run))
    assert not out.exists()

    client = MlflowClient(tracking_uri(tiny_run))
    step, stem = final_checkpoint_circuit(tiny_run, settings)
    final = f"step-{TINY_RUN_STEPS[-1]:06d}"
    assert (step, stem) == (TINY_RUN_STEPS[-1], out / final)
    assert {p.name for p in out.glob("step-*")} == {p.name for p in circuit_files(stem)}  # only it
    assert pl.read_parquet(out / SUMMARY_FILE)["key"].to_list() == [final]
    edges, meta = read_circuit(stem)
    assert (meta["unit"]["step"], meta["unit"]["model"]) == (TINY_RUN_STEPS[-1], "checkpoint")
    stamps = [p.stat().st_mtime_ns for p in circuit_files(stem)]
    (tracked,) = client.search_runs([client.get_experiment_by_name("circuits").experiment_id],
                                    max_results=1)  # fmt: skip  # the newest: this circuit's
    assert tracked.data.metrics["faithfulness"] == meta["faithfulness"]["faithfulness"]
    assert {a.path for a in client.list_artifacts(tracked.info.run_id, "circuits")} == {
        f"circuits/{p.name}" for p in circuit_files(stem)
    }

    found = run_circuits(tiny_run, settings)  # every checkpoint: the final one is reused, not redone
    assert (found.directory, found.computed) == (out, len(TINY_RUN_STEPS) - 1)
    assert [p.stat().st_mtime_ns for p in circuit_files(stem)] == stamps
    runs = len(client.search_runs([tracked.info.experiment_id]))
    assert final_checkpoint_circuit(tiny_run, settings) == (step, stem)  # on disk: the same file, no actor
    assert len(client.search_runs([tracked.info.experiment_id])) == runs  # and no new MLflow run
    assert [p.stat().st_mtime_ns for p in circuit_files(stem)] == stamps

    for path in circuit_files(stem):  # run_circuits' own circuit of that checkpoint is the same one
        path.unlink()
    assert run_circuits(tiny_run, settings).computed == 1
    redone, redone_meta = read_circuit(stem)
    assert redone.equals(edges)
    assert redone_meta["faithfulness"] == meta["faithfulness"]
