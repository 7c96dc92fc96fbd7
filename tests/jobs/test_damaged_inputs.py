"""The jobs on a damaged input file: exit status 2 and one line on stderr that names the file, what is wrong
with it and how to rebuild it; no traceback, and no Ray started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.circuits.io import circuit_files, write_circuit
from ftcircuits.config.discovery import AnalysisConfig
from ftcircuits.config.loading import load_config
from ftcircuits.integrity import DamagedFileError
from ftcircuits.run_layout import RUN_CONFIG_FILE
from ftcircuits.study.over_run import (
    METRICS,
    SUMMARY_FILE,
    circuit_rebuild_hint,
    circuits_dir,
    read_run_circuit,
    run_inputs,
)
from ftcircuits.tasks import build_dataset, read_items, task_family, write_dataset
from ftcircuits.tasks.io import ITEMS_FILE, rebuild_hint
from jobs import analyze
from jobs import circuits as circuits_job

STEPS = (0, 3, 6, 9)  # the tiny run's checkpoints


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def exit_line(capsys, main, argv: list[str]) -> str:
    """Return the one line ``main(argv)`` writes on stderr, checking it exits with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err
    return err.rstrip("\n")


def test_a_circuit_of_a_damaged_dataset_exits_2_naming_the_file(tmp_path, model_dir, tokenizer, capsys):
    items, _ = build_dataset(task_family("addsub", range=100), tokenizer, 100, seed=0)
    data = write_dataset(tmp_path / "addsub-100", items, {"task": "addsub"})
    cut(data / ITEMS_FILE)
    with pytest.raises(DamagedFileError) as caught:
        read_items(data)
    assert caught.value.path == data / ITEMS_FILE
    line = exit_line(capsys, circuits_job.main, ["--model", str(model_dir), "--data", str(data)])
    assert line == f"error: {caught.value}"
    assert line.startswith(
        f"error: {data / ITEMS_FILE}: not a readable parquet file, truncated or overwritten"
    )


@pytest.fixture()
def run_copy(tmp_path, tiny_run, hand_built_circuit) -> tuple[Path, Path]:
    """A copy of the tiny run with its own dataset and, under the default analysis settings, a circuit per
    checkpoint and their summary: (run, circuits directory)."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("circuits")))
    record = json.loads((run / RUN_CONFIG_FILE).read_text())
    data = shutil.copytree(record["data_dir"], run / "data" / "addsub-100", dirs_exist_ok=True)
    (run / RUN_CONFIG_FILE).write_text(json.dumps(record | {"data_dir": str(data)}))
    config = load_config(AnalysisConfig, None, [f"run={run}", "robustness.enabled=false"])
    out = circuits_dir(run, config, run_inputs(run))
    rows = []
    for step in STEPS:
        key = f"step-{step:06d}"
        write_circuit(
            out / key,
            hand_built_circuit({("a0.h1", "logits"): 1.0}, background=None),
            {"step": step, "faithfulness": dict.fromkeys(METRICS, 1.0)},
        )
        rows.append(
            {"key": key, "model": "checkpoint", "step": step, "ratio": 0.0} | dict.fromkeys(METRICS, 1.0)
        )
    pl.DataFrame(rows).write_parquet(out / SUMMARY_FILE)
    return run, out


def test_the_analysis_of_a_run_with_a_damaged_circuit_exits_2_naming_it(run_copy, capsys):
    run, out = run_copy
    edges, _ = circuit_files(out / "step-000003")
    cut(edges)
    with pytest.raises(DamagedFileError) as caught:
        read_run_circuit(out, "step-000003")
    assert caught.value.path == edges and caught.value.rebuild == circuit_rebuild_hint(out, edges)
    assert caught.value.rebuild == (
        f"rerun with --set rebuild=true, or delete {edges}: python -m jobs.circuits --run {run} (with the "
        "same --set settings; every job that runs this stage takes --set rebuild=true)"
    )
    line = exit_line(capsys, analyze.main, ["--run", str(run), "--set", "robustness.enabled=false"])
    assert line == f"error: {caught.value}"


@pytest.mark.parametrize("damaged", ["edges", "json", "dataset"])
def test_the_circuits_of_a_run_with_a_damaged_input_exit_2_before_ray_starts(run_copy, capsys, damaged):
    run, out = run_copy
    path = {
        "edges": circuit_files(out / "step-000006")[0],
        "json": circuit_files(out / "step-000006")[1],
        "dataset": run / "data" / "addsub-100" / ITEMS_FILE,
    }[damaged]
    path.write_bytes(b"")
    argv = ["--run", str(run), "--set", "robustness.enabled=false"]
    line = exit_line(capsys, circuits_job.main, argv)
    hint = circuit_rebuild_hint(out, path) if damaged != "dataset" else rebuild_hint(path.parent)
    assert line == f"error: {path}: the file is empty (0 bytes); to rebuild it: {hint}"
