"""jobs.compare_methods on a real local Ray: every (method, seed) run fitted as a Tune trial, the table with
each run's trainable parameters, MLflow children under the task's parent, and a rerun that reuses all."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.loader import load_model
from ftcircuits.run_layout import index_path
from ftcircuits.study.circuitlora import PLAN_FILE
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs import compare_methods


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture()
def compare_config(tmp_path, tiny_run) -> Path:
    """LoRA r=4, CircuitLoRA matched to it (k=1, the tiny run as reference) and IA3, 2 seeds, 5 steps each."""
    preset = write_yaml(tmp_path / "preset.yaml", {
        "model": str(tiny_run / "base"), "task": {"name": "addsub", "range": 100},
        "method": {"name": "lora", "r": 4}, "scaling": {"workers": 1, "cpus_per_worker": 1},
        "deepspeed": {"zero_stage": 0},
        "train": {"epochs": 1, "micro_batch_size": 16, "grad_accumulation": 1, "warmup_steps": 1,
                  "checkpoint_every": 2, "lr": 0.01},
        "eval_batch_size": 64, "out": str(tmp_path / "unused"),
    })  # fmt: skip
    return write_yaml(tmp_path / "compare.yaml", {
        "finetune_config": str(preset), "reference_config": str(preset),
        "reference_runs": {"addsub-100": str(tiny_run)},
        "circuits": {"discovery": {"examples": 16, "batch_size": 8}},
        "tasks": [{"name": "addsub", "range": 100, "size": 100}], "seeds": [0, 1],
        "arms": [{"name": "lora"},
                 {"name": "circuitlora", "circuitlora": {"critical": {"k": 1},
                                                         "ranks": {"lora_r": 4, "ratio": 2.0}}},
                 {"name": "ia3", "finetune": {"method": {"name": "ia3"}}}],
        "out": str(tmp_path / "cmp"),
    })  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
def test_comparison_runs_every_method_and_seed_and_a_rerun_reuses_them(tmp_path, ray_cluster, tiny_run,
                                                                       compare_config):  # fmt: skip
    out = tmp_path / "cmp"
    compare_methods.main(["--config", str(compare_config)])
    table = pl.read_parquet(out / "comparison.parquet")
    assert table.select("method", "seed").sort("method", "seed").rows() == [
        ("circuitlora", 0), ("circuitlora", 1), ("ia3", 0), ("ia3", 1), ("lora", 0), ("lora", 1)
    ]  # fmt: skip
    assert table["steps"].to_list() == [5] * 6  # 80 items / 16 per step, one epoch: every run ran to its end

    base = load_model(str(tiny_run / "base")).model
    total = sum(p.numel() for p in base.parameters())
    arch = load_model(str(tiny_run / "base")).architecture
    plan = json.loads((out / "addsub-100" / "circuitlora" / PLAN_FILE).read_text())
    expected = {
        "lora": trainable_parameters(apply_method(base, arch, MethodConfig(name="lora", r=4))),
        "circuitlora": plan["params"],
        "ia3": trainable_parameters(apply_method(load_model(str(tiny_run / "base")).model, arch,
                                                 MethodConfig(name="ia3"))),
    }  # fmt: skip
    for method, params in expected.items():
        rows = table.filter(pl.col("method") == method)
        assert rows["trainable_params"].to_list() == [params, params]
        assert rows["param_share"].to_list() == pytest.approx([params / total] * 2)
    assert 0.95 * expected["lora"] <= expected["circuitlora"] <= expected["lora"]
    for row in table.iter_rows(named=True):
        index = pl.read_parquet(index_path(out / "addsub-100" / row["method"] / f"seed-{row['seed']}"))
        assert row["accuracy"] == index.sort("step")["eval_accuracy"][-1]

    client = MlflowClient(tracking_uri(out))
    (experiment,) = [e for e in client.search_experiments() if e.name == "compare-methods"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "addsub-100" and len(runs) == 7
    assert sorted((r.data.tags["method"], r.data.tags["seed"]) for r in children) == sorted(
        (m, str(s)) for m, s in table.select("method", "seed").rows()
    )
    assert {r.info.status for r in children} == {"FINISHED"}
    assert "| addsub-100 | lora |" in (out / "comparison.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("addsub-100/*/seed-*/checkpoints/index.parquet")}
    compare_methods.main(["--config", str(compare_config)])  # everything finished: reused, logged once
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(stamps) == 6
    assert len(client.search_runs([experiment.experiment_id])) == 7
    assert pl.read_parquet(out / "comparison.parquet").equals(table)


def test_a_schedule_the_run_cannot_hold_is_refused_before_any_run(tmp_path, tiny_run, compare_config):
    tree = yaml.safe_load(compare_config.read_text())
    adalora = {"method": {"name": "adalora", "r": 2}}  # tinit 25 + tfinal 50
    tree["arms"] = [{"name": "adalora", "finetune": adalora}]
    path = write_yaml(tmp_path / "bad.yaml", tree)
    with pytest.raises(SystemExit, match="adalora/seed-0: AdaLoRA's adalora_tinit 25 .* run of 5 steps"):
        compare_methods.main(["--config", str(path)])
    assert not (tmp_path / "cmp" / "addsub-100" / "adalora").exists()
