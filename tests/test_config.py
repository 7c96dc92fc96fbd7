"""Config: YAML + dotted overrides; every bad input is one clear error naming the field."""

from __future__ import annotations

import pytest

from ftcircuits.config.data import DataConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.study import StudyConfig


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  lr: 0.002\n  epochs: 2\nfinetune_task: {name: addsub, range: 300}\n")
    config = load_config(StudyConfig, path, ["finetune.epochs=5", "finetune_task.range=200"])
    assert config.finetune.lr == 0.002 and config.finetune.epochs == 5
    assert config.finetune_task.range == 200 and config.finetune_task.dataset_name() == "addsub-200"
    assert len(config.tasks) == 12


def test_override_into_a_default_section_keeps_its_other_fields():
    config = load_config(StudyConfig, None, ["finetune_task.range=400"])
    assert config.finetune_task.name == "addsub" and config.finetune_task.range == 400


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["finetune.lr=fast"], "finetune.lr: Input should be a valid number"),
        (["finetune.learning_rate=1"], "finetune.learning_rate: unknown field"),
        (["finetune_task.name=calculus"], "unknown task 'calculus'; allowed: addsub"),
        (["finetune_task.range=150"], "addsub range must be one of (100, 200, 300, 400, 500), got 150"),
        (["finetune_task={name: lcm, range: 100}"], "task 'lcm' does not take parameters ['range']"),
        (["model=./missing/model"], "model: model path './missing/model' is not a readable directory"),
        (["finetune.epochs=0"], "finetune.epochs: Input should be greater than or equal to 1"),
        (["finetune.lr"], "is not of the form key.path=value"),
    ],
)
def test_bad_input_names_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(StudyConfig, None, overrides)
    assert message in str(error.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(StudyConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("finetune: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(StudyConfig, broken)


def test_data_config_checks_perturbation_ratios():
    with pytest.raises(ConfigError, match="perturb_ratios"):
        load_config(DataConfig, None, ["tasks=[{name: addsub, range: 100}]", "perturb_ratios=[0.5, 1.5]"])


def test_finetune_config_rejects_what_deepspeed_cannot_run_before_ray_starts():
    from ftcircuits.config.training import FinetuneConfig, MethodConfig, TrainConfig

    with pytest.raises(ConfigError, match="lr_groups pattern '\\(' is not a regular expression"):
        load_config(FinetuneConfig, None, ["train.lr_groups={'(': 0.1}"])
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(FinetuneConfig, None, ["train.lr_groups={'layers': 0}"])
    with pytest.raises(ConfigError, match="adalora' needs deepspeed.zero_stage=0, not 2"):
        load_config(FinetuneConfig, None, ["method.name=adalora", "deepspeed.zero_stage=2"])
    config = load_config(FinetuneConfig, None, ["method.name=adalora", "deepspeed.zero_stage=0"])
    assert (config.method.name, config.deepspeed.zero_stage) == ("adalora", 0)
    assert (
        config.method == MethodConfig(name="adalora") and config.train == TrainConfig()
    )  # the rest: defaults
    with pytest.raises(ConfigError, match="needs scaling.use_gpu=true"):
        load_config(FinetuneConfig, None, ["deepspeed.precision=bf16"])
