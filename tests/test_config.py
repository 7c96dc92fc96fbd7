"""Config: YAML + dotted overrides; every bad input is one clear error naming the field."""

from __future__ import annotations

import polars as pl
import pytest

from ftcircuits.config.data import DataConfig
from ftcircuits.config.discovery import AnalysisConfig, DiscoverySettings
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


def test_a_sample_seed_draws_the_same_seeded_rows_in_split_order_and_keys_circuits_apart():
    items = pl.DataFrame({"id": list(range(20)), "prompt": [f"p{i}" for i in range(20)]})
    first = DiscoverySettings(examples=5, sample_seed=None)
    assert first.sample(items)["id"].to_list() == [0, 1, 2, 3, 4]
    assert DiscoverySettings(examples=5).sample(items)["id"].to_list() == (
        DiscoverySettings(examples=5, sample_seed=0).sample(items)["id"].to_list()
    )  # a sample by default
    drawn = DiscoverySettings(examples=5, sample_seed=3).sample(items)["id"].to_list()
    assert drawn == sorted(drawn) and len(set(drawn)) == 5 and drawn != [0, 1, 2, 3, 4]
    assert DiscoverySettings(examples=5, sample_seed=3).sample(items)["id"].to_list() == drawn
    assert DiscoverySettings(examples=5, sample_seed=4).sample(items)["id"].to_list() != drawn
    assert DiscoverySettings(examples=50, sample_seed=3).sample(items).height == 20
    assert first.discovery_key()["sample_seed"] is None
    assert DiscoverySettings(examples=5, sample_seed=3).discovery_key()["sample_seed"] == 3


def test_critical_k_is_a_share_of_the_layers_unless_given(tiny_run):
    assert AnalysisConfig(run=tiny_run).critical_count(6) == 1  # round(0.2 * 6)
    assert AnalysisConfig(run=tiny_run).critical_count(24) == 5  # the authors' k = 5 of 24
    assert AnalysisConfig(run=tiny_run, critical_k=3).critical_count(6) == 3
    assert AnalysisConfig(run=tiny_run, critical_k=9).critical_count(6) == 6
