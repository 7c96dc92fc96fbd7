"""The jobs as a user runs them: files written, bad input rejected before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image as mpimg
import polars as pl
import pytest
import torch
from transformers.utils import CONFIG_NAME

from ftcircuits.encoding import task_accuracy
from ftcircuits.models.loader import load_model
from ftcircuits.tasks.io import ITEMS_FILE, MANIFEST_FILE, read_items
from jobs import make_data, study


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


def test_study_measures_base_and_finetuned_accuracy(tmp_path, model_dir):
    run = tmp_path / "run"
    study.main(
        [
            "--set", f"model={model_dir}",
            "--set", f"out={run}",
            "--set", "tasks=[{name: function, size: 100}]",
            "--set", "finetune_task={name: addsub, range: 100, size: 200}",
            "--set", "finetune.epochs=1",
        ]
    )  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    assert set(results["accuracy_base"]) == {"function", "addsub-100"}
    assert results["finetune_items"] == 160
    # each accuracy is what the saved model (base, and the fine-tuned one the job wrote) scores on the
    # circuit split of the dataset the job wrote
    logits = {}
    for key, model in (("accuracy_base", model_dir), ("accuracy_finetuned", run / "finetuned")):
        loaded = load_model(str(model))
        for name in ("function", "addsub-100"):
            items = read_items(run / "data" / name, "circuit")
            expected = task_accuracy(loaded.model, loaded.tokenizer, items)["all"]
            assert results[key][name] == expected, (key, name)
        ids = torch.tensor([loaded.tokenizer("Calculate the result of 5 + 3 =")["input_ids"]])
        with torch.no_grad():
            logits[key] = loaded.model(ids).logits
    assert not torch.allclose(logits["accuracy_base"], logits["accuracy_finetuned"])  # it was fine-tuned
    figure = run / "accuracy.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(figure).shape == (432, 720, 4)  # 6 x 3.6 inches at 120 dpi
    assert (run / "finetuned" / CONFIG_NAME).is_file()
