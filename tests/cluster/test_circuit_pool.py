"""Circuits over a run on a real local Ray: actors equal a sequential run, survive a killed actor, skip
finished work."""

from __future__ import annotations

import os
import shutil
import signal

import polars as pl
import pytest
import ray

from ftcircuits.circuits.io import read_circuit
from ftcircuits.cluster import circuit_pool
from ftcircuits.cluster.circuit_pool import circuits_over_run, run_on_actors, start_actors, started_actors
from ftcircuits.config.discovery import CircuitRunConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.integrity import DamagedFileError
from ftcircuits.run_layout import RUN_CONFIG_FILE, index_path
from ftcircuits.study.over_run import SUMMARY_FILE, CircuitRunner, circuit_units, run_inputs


def run_config(run, *overrides: str) -> CircuitRunConfig:
    sets = [f"run={run}", "discovery.examples=16", "discovery.batch_size=8", "actors.count=2", *overrides]
    return load_config(CircuitRunConfig, None, sets)


@pytest.mark.ray
@pytest.mark.slow
def test_actor_pool_equals_a_sequential_run_and_a_rerun_skips_everything(tmp_path, ray_cluster, tiny_run):
    config = run_config(tiny_run)
    out, rows, computed = circuits_over_run(config.run, config)
    inputs = run_inputs(tiny_run)
    units = circuit_units(inputs, robustness=True)
    # 4 checkpoints + (base, random-init, random-scaled, permuted) x (unperturbed, p=0.5)
    assert computed == len(units) == 12 and [r["key"] for r in rows] == [t.key for t in units]
    sequential = CircuitRunner(inputs.base_model, inputs.data, config.discovery, tmp_path)
    for unit in reversed(units):  # another order: swapping must not leak weights between units
        sequential.run(unit)
        ours, _ = read_circuit(out / unit.key)
        theirs, _ = read_circuit(tmp_path / unit.key)
        assert ours["in_circuit"].equals(theirs["in_circuit"]), unit.key
        assert ours["score"].to_numpy() == pytest.approx(theirs["score"].to_numpy(), rel=1e-4, abs=1e-7)
    by_key = {r["key"]: r for r in rows}
    assert by_key["step-000000"]["edges_in_circuit"] == by_key["base-p0.00"]["edges_in_circuit"]
    assert pl.read_parquet(out / SUMMARY_FILE).height == 12

    again_out, again_rows, again_computed = circuits_over_run(config.run, config)
    assert again_computed == 0 and again_out == out and again_rows == rows

    from jobs.analyze import main as analyze

    analyze(["--run", str(tiny_run), "--set", "discovery.examples=16", "--set", "discovery.batch_size=8"])
    similarity = pl.read_parquet(out / "analysis" / "similarity.parquet")
    assert similarity["step"].to_list() == [0, 3, 6, 9]  # the tiny run's checkpoints
    assert similarity["edge_jaccard_base"][0] == 1.0 and similarity["edge_jaccard_prev"][0] is None
    robustness = pl.read_parquet(out / "analysis" / "robustness.parquet")
    assert sorted(robustness["model"].to_list()) == ["base", "permuted", "random-init", "random-scaled"]
    summary = pl.read_parquet(out / SUMMARY_FILE).filter(pl.col("ratio") == 0.0).sort("key")
    flags = dict(robustness.select("model", "degenerate").iter_rows())
    for model, kl in summary.filter(pl.col("model") != "checkpoint").select("model", "input_kl").iter_rows():
        assert flags[model] == (kl < 1e-3), model  # the flag is the KL rule on the stored metric
    against = pl.read_parquet(out / "analysis" / "robustness_baselines.parquet")
    assert sorted(against["baseline"].to_list()) == ["permuted", "random-init", "random-scaled"]
    curves = pl.read_parquet(out / "analysis" / "faithfulness_by_budget.parquet")
    assert sorted(curves["step"].unique().to_list()) == [0, 3, 6, 9] and curves.height == 4 * 10
    figures = {"similarity.png", "layer_scores.png", "circuit_changes.png", "robustness.png",
               "jaccard_by_budget.png", "faithfulness_by_checkpoint.png"}  # fmt: skip
    assert figures <= {p.name for p in (out / "analysis").iterdir()}


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_every_checkpoint_completes(tmp_path, ray_cluster, tiny_run):
    config = run_config(tiny_run, "robustness.enabled=false")
    inputs = run_inputs(tiny_run)
    units = circuit_units(inputs, robustness=False)
    actors = start_actors(2, (inputs.base_model, inputs.data, config.discovery, tmp_path), retries=2)
    victim = ray.get(actors[0].pid.remote())
    killed = []

    def kill_once(row: dict) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(row["key"])

    rows = run_on_actors(actors, units, in_flight_per_actor=2, on_result=kill_once)
    assert killed and sorted(r["key"] for r in rows) == sorted(t.key for t in units)
    assert all((tmp_path / f"{t.key}.json").is_file() for t in units)
    assert ray.get(actors[0].pid.remote()) != victim  # Ray restarted it


def actors_ever_started() -> int:
    """Return how many actors the cluster's GCS knows, dead ones included (``ray.util.state`` needs the
    dashboard, which the test cluster does not run)."""
    return len(ray._private.state.actors())


@pytest.mark.ray
@pytest.mark.slow
def test_a_bad_run_directory_fails_before_any_actor_starts(
    tmp_path, ray_cluster, tiny_run, monkeypatch, capsys
):
    import jobs.circuits

    started, connected = [], []
    import ftcircuits.cluster.run_circuits as run_circuits

    monkeypatch.setattr(run_circuits, "connect", lambda *a, **k: connected.append(a))
    real_start = circuit_pool.start_actors
    monkeypatch.setattr(
        circuit_pool, "start_actors", lambda *a, **k: started.append(a) or real_start(*a, **k)
    )
    before = actors_ever_started()

    # not a run at all: the job's config refuses it, exit status 2 and the error on stderr, before Ray
    with pytest.raises(SystemExit) as exit_:
        jobs.circuits.main(["--run", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"no fine-tuning run at '{tmp_path}'" in capsys.readouterr().err
    # no driver record (finetune.json) beside a valid index: the config refuses it, before Ray
    broken = tmp_path / "no-record"
    shutil.copytree(tiny_run / "checkpoints", broken / "checkpoints")
    with pytest.raises(SystemExit) as exit_:
        jobs.circuits.main(["--run", str(broken)])
    assert exit_.value.code == 2
    assert f"{RUN_CONFIG_FILE} is missing" in capsys.readouterr().err
    assert connected == []
    # checkpoints listed in the index but gone: the config leaves the damaged index to the stage, and the
    # pool itself names it before it starts any actor
    gone = tmp_path / "gone"
    (gone / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / RUN_CONFIG_FILE, gone / RUN_CONFIG_FILE)
    index = pl.read_parquet(index_path(tiny_run))
    index.with_columns(path=pl.col("path").str.replace(str(tiny_run), str(gone), literal=True)).write_parquet(
        index_path(gone)
    )
    with pytest.raises(
        DamagedFileError, match="lists checkpoints whose directories are missing: step 0"
    ) as damaged:
        circuits_over_run(gone, run_config(gone))
    assert damaged.value.path == index_path(gone)
    assert started == [] and connected == [] and actors_ever_started() == before
    assert not (gone / "circuits").exists()


def test_robustness_on_the_fine_tune_split_is_refused_by_the_config(tiny_run):
    with pytest.raises(ConfigError, match="robustness compares perturbed circuit splits"):
        load_config(CircuitRunConfig, None, [f"run={tiny_run}", "discovery.split=finetune"])
    config = load_config(
        CircuitRunConfig, None, [f"run={tiny_run}", "discovery.split=finetune", "robustness.enabled=false"]
    )
    assert (config.run, config.discovery.split, config.robustness.enabled) == (tiny_run, "finetune", False)
    assert config.discovery.examples == 256 and config.actors.count == 2  # the rest: the run's defaults


class Pinged:
    def pid(self) -> int:
        return os.getpid()


@pytest.mark.ray
@pytest.mark.slow
def test_the_pool_goes_on_with_the_actors_the_cluster_can_place(ray_cluster):
    import ray

    remote = ray.remote(Pinged).options(num_cpus=1)
    actors = [remote.remote() for _ in range(3)]  # the test cluster has 2 CPUs: one cannot start
    started = started_actors(actors, timeout=120, grace=5)
    assert len(started) == 2
    assert len({ray.get(actor.pid.remote()) for actor in started}) == 2
    for actor in started:
        ray.kill(actor)
    unplaceable = [ray.remote(Pinged).options(num_cpus=1, resources={"no-such-node": 1}).remote()]
    with pytest.raises(RuntimeError, match=r"no circuit actor started within 2 s \(2.0 CPUs free"):
        started_actors(unplaceable, timeout=2)
