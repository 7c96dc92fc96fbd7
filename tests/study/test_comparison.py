"""The method comparison's plumbing: run configs from arms, the table from run directories, mean ± std,
the markdown, the figure, and the bad configs it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import polars as pl
import pytest
import yaml

from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.finetune.methods import check_schedule
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.report.figures import method_comparison
from ftcircuits.run_layout import index_path, run_finished
from ftcircuits.study.comparison import (
    ComparedRun,
    arm_config,
    comparison_summary,
    comparison_table,
    learned_tasks,
    reference_config,
    summary_markdown,
)
from ftcircuits.tasks.spec import TaskSpec

PRESET = Path("jobs/configs/finetune-tiny-short.yaml")


def compare_config(tmp_path: Path, **fields) -> CompareConfig:
    tree = {"finetune_config": str(PRESET), "reference_config": "jobs/configs/finetune-tiny.yaml",
            "arms": [{"name": "lora"},
                     {"name": "ia3", "finetune": {"method": {"name": "ia3"}, "train": {"lr": 0.01}}}],
            "out": str(tmp_path / "cmp")} | fields  # fmt: skip
    return CompareConfig.model_validate(tree)


def test_arm_config_applies_recipe_arm_task_and_seed(tmp_path):
    config = compare_config(tmp_path, recipe={"train": {"epochs": 2}})
    task = TaskSpec(name="muldiv")
    run = arm_config(config, config.arms[1], task, seed=7)
    assert run.method.name == "ia3" and run.train.lr == 0.01 and run.train.epochs == 2
    assert run.train.seed == 7 and run.task == task
    assert run.out == tmp_path / "cmp" / "muldiv" / "ia3" / "seed-7"
    assert run.method.trainable_tokens == ["+", "-", "*", "/", "="]  # the rest is the preset's


def test_a_bad_arm_override_names_the_field(tmp_path):
    config = compare_config(tmp_path, arms=[{"name": "x", "finetune": {"method": {"name": "qlora"}}}])
    with pytest.raises(ConfigError, match="arm x: invalid config: method.name: Input should be 'fpft'"):
        arm_config(config, config.arms[0], TaskSpec(name="addsub", range=100), 0)


def test_the_reference_is_the_presets_own_run_on_its_own_task_and_a_new_one_elsewhere(tmp_path):
    config = compare_config(tmp_path)
    own = reference_config(config, TaskSpec(name="addsub", range=100))
    assert own.out == Path("runs/finetune-tiny")
    other = reference_config(config, TaskSpec(name="addsub", range=200))
    assert other.out == tmp_path / "cmp" / "addsub-200" / "reference" and other.task.range == 200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names repeat"),
        ({"seeds": [1, 1]}, "seeds repeat"),
        ({"seeds": []}, "no seeds"),
        ({"arms": [{"name": "a b"}]}, "must be a file name"),
        ({"reference_runs": {"addsub-200": "x"}}, "reference_runs name tasks not compared"),
        ({"arms": [{"name": "c", "circuitlora": {"ranks": {"choice": "paper-4-8"}}}]}, "paper-8-32"),
    ],
)
def test_bad_comparisons_are_refused(tmp_path, fields, message):
    path = tmp_path / "bad.yaml"
    base = {"finetune_config": str(PRESET), "arms": [{"name": "lora"}]}
    path.write_text(yaml.safe_dump(base | fields))
    with pytest.raises(ConfigError, match=message):
        load_config(CompareConfig, path)


def write_run(out: Path, accuracies: list[float], trainable: int, total: int = 1000) -> Path:
    steps = [100 * i for i in range(len(accuracies))]
    rows = {"step": steps, "path": [str(out / f"s{s}") for s in steps], "train_loss": [0.0] * len(steps),
            "eval_accuracy": accuracies, "trainable_params": [trainable] * len(steps),
            "model_params": [total] * len(steps), "total_steps": [steps[-1]] * len(steps)}  # fmt: skip
    index_path(out).parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(index_path(out))
    return out


def compared(tmp_path: Path, task: str, method: str, seed: int, accuracies: list[float], trainable: int):
    config = compare_config(tmp_path)
    run = arm_config(config, config.arms[0], TaskSpec(name="addsub", range=100), seed)
    out = write_run(tmp_path / task / method / str(seed), accuracies, trainable)
    return ComparedRun(task, method, seed, run.model_copy(update={"out": out}))


def test_table_summary_and_markdown_hold_the_runs_values(tmp_path):
    runs = [
        compared(tmp_path, "addsub-100", "lora", 0, [0.0, 0.9, 0.6], 200),
        compared(tmp_path, "addsub-100", "lora", 1, [0.0, 0.8], 200),
        compared(tmp_path, "addsub-100", "fpft", 0, [0.0, 0.2], 1000),
        compared(tmp_path, "muldiv", "lora", 0, [0.0, 0.1], 200),
    ]
    table = comparison_table(runs)
    assert table.columns[:6] == ["task", "method", "seed", "trainable_params", "param_share", "accuracy"]
    assert table["accuracy"].to_list() == [0.6, 0.8, 0.2, 0.1]  # the last checkpoint's, not the best
    assert table["best_accuracy"].to_list() == [0.9, 0.8, 0.2, 0.1]
    assert table["param_share"].to_list() == [0.2, 0.2, 1.0, 0.2]
    summary = comparison_summary(table)
    assert summary.select("task", "method").rows() == [("addsub-100", "lora"), ("addsub-100", "fpft"),
                                                       ("muldiv", "lora")]  # fmt: skip
    lora = summary.row(0, named=True)
    assert lora["mean"] == pytest.approx(0.7) and lora["seeds"] == 2
    assert lora["std"] == pytest.approx(math.sqrt(((0.6 - 0.7) ** 2 + (0.8 - 0.7) ** 2) / 1))
    assert summary.row(1, named=True)["std"] is None  # one seed has no spread
    markdown = summary_markdown(summary)
    assert "| addsub-100 | lora | 70.0 ± 14.1 | 2 | 200 | 20.00% |" in markdown
    assert "| addsub-100 | fpft | 20.0 ± n/a | 1 | 1,000 | 100.00% |" in markdown
    assert learned_tasks(summary, 0.3) == {"addsub-100": True, "muldiv": False}


def test_comparison_figure_draws_one_bar_per_method_at_the_mean(tmp_path):
    table = pl.DataFrame({"task": ["t"] * 4, "method": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
                          "accuracy": [0.5, 0.7, 0.2, 0.2]})  # fmt: skip
    path = method_comparison(table, tmp_path / "c.png")
    assert matplotlib.image.imread(path).shape[2] == 4
    other = method_comparison(table.with_columns(pl.col("accuracy") / 2), tmp_path / "d.png")
    assert path.read_bytes() != other.read_bytes()


def test_optimizer_steps_and_the_adalora_schedule_check():
    # 240 examples / 32 = 8 micro-batches an epoch; 2 workers x accumulation 3 keep 6 of them: 1 step each
    assert optimizer_steps(240, epochs=4, micro_batch=32, workers=2, grad_accumulation=3) == 4
    assert optimizer_steps(3200, epochs=4, micro_batch=32, workers=1, grad_accumulation=1) == 400
    from ftcircuits.finetune.settings import MethodConfig

    adalora = MethodConfig(name="adalora", adalora_tinit=25, adalora_tfinal=50)
    check_schedule(adalora, 76)
    with pytest.raises(ValueError, match="no rank-reallocation phase in a run of 75 steps"):
        check_schedule(adalora, 75)
    check_schedule(MethodConfig(name="lora"), 1)


def test_run_finished_reads_the_index(tmp_path):
    assert not run_finished(tmp_path / "none")
    done = write_run(tmp_path / "done", [0.0, 0.5], 10)
    assert run_finished(done)
    index = pl.read_parquet(index_path(done)).with_columns(pl.lit(500).alias("total_steps"))
    index.write_parquet(index_path(done))
    assert not run_finished(done)
