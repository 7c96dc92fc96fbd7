"""The jobs as a user runs them: files written, bad input rejected before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from ftcircuits.tasks.io import ITEMS_FILE, MANIFEST_FILE
from jobs import make_data


def test_make_data_writes_a_dataset_with_manifest_and_perturbed_variants(tmp_path, model_dir):
    argv = ["--task", "lcm", "--size", "200", "--model", str(model_dir), "--out", str(tmp_path / "data")]
    make_data.main([*argv, "--set", "perturb_ratios=[0.2,0.6]"])
    directory = tmp_path / "data" / "lcm"
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["task"] == "lcm" and manifest["summary"]["items"] == 200
    assert manifest["counts"]["kept"] == 200 and set(manifest["perturbed"]) == {"0.20", "0.60"}
    items = pl.read_parquet(directory / ITEMS_FILE)
    assert dict(items.group_by("split").len().iter_rows()) == {"finetune": 160, "circuit": 40}


@pytest.mark.slow  # a fresh interpreter imports torch
def test_bad_input_exits_with_one_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.make_data", "--task", "addsub", "--range", "150", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "addsub range must be one of (100, 200, 300, 400, 500), got 150" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_bench_explorer_names_an_unknown_shape_before_any_work(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "jobs.bench_explorer", "--set", "shape=pythia-9b", "--set", f"out={out}"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown shapes ['pythia-9b']" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
