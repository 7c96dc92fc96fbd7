"""Config: YAML + dotted overrides; every bad input is one clear error naming the field."""

from __future__ import annotations

import polars as pl
import pytest

from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.config.data import DataConfig
from ftcircuits.config.discovery import AnalysisConfig, AnalysisSettings, CircuitRunSettings
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.pipeline import PIPELINE_CIRCUITS, PipelineConfig
from ftcircuits.finetune.settings import FinetuneConfig


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.002\n  epochs: 2\ntask: {name: addsub, range: 300}\n")
    config = load_config(FinetuneConfig, path, ["train.epochs=5", "task.range=200"])
    assert config.train.lr == 0.002 and config.train.epochs == 5
    assert config.task.range == 200 and config.task.dataset_name() == "addsub-200"
    assert config.train.micro_batch_size == 8  # the section's other fields: defaults


def test_override_into_a_default_section_keeps_its_other_fields():
    config = load_config(FinetuneConfig, None, ["task.range=400"])
    assert config.task.name == "addsub" and config.task.range == 400


def test_a_section_given_in_part_keeps_the_fields_default_at_every_depth(tmp_path):
    """The pipeline's circuits default differs from CircuitRunSettings' own: a partial section in a file or
    an override completes from the field's default, not from the section class's defaults."""
    path = tmp_path / "p.yaml"
    path.write_text("circuits:\n  discovery: {batch_size: 8}\n  actors: {count: 1}\n")
    config = load_config(PipelineConfig, path, ["circuits.robustness.enabled=false"])
    circuits = config.circuits
    discovery = circuits.discovery
    assert (discovery.batch_size, discovery.examples, discovery.curve) == (8, 128, True)
    assert (circuits.actors.count, circuits.actors.threads) == (1, 1)
    assert circuits.robustness == PIPELINE_CIRCUITS.robustness.model_copy(update={"enabled": False})
    assert load_config(PipelineConfig).circuits == PIPELINE_CIRCUITS
    run = load_config(CircuitRunSettings, None, ["discovery.examples=64"]).discovery
    assert (run.examples, run.curve) == (64, True)  # a run's default discovery: curves on


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.lr=fast"], "train.lr: Input should be a valid number"),
        (["train.learning_rate=1"], "train.learning_rate: unknown field"),
        (["task.name=calculus"], "unknown task 'calculus'; allowed: addsub"),
        (["task.range=150"], "addsub range must be one of (100, 200, 300, 400, 500), got 150"),
        (["task={name: lcm, range: 100}"], "task 'lcm' does not take parameters ['range']"),
        (["model=./missing/model"], "model: model path './missing/model' is not a readable directory"),
        (["train.epochs=0"], "train.epochs: Input should be greater than or equal to 1"),
        (["train.lr"], "is not of the form key.path=value"),
    ],
)
def test_bad_input_names_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(FinetuneConfig, None, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["circuits.discovery.examples=0"], "circuits.discovery.examples: Input should be greater than"),
        (["circuits.robustness.baselines=[noise]"], "circuits.robustness.baselines.0: Input should be"),
        (["circuits.actors.count=0"], "circuits.actors.count: Input should be greater than or equal to 1"),
        (["circuits.discovery.split=finetune"], "robustness compares perturbed circuit splits"),
        (["circuit_overrides=[examples=128]"], "circuit_overrides: unknown field"),
    ],
)
def test_bad_circuit_settings_name_the_nested_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, None, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "schema,override,message",
    [
        (AnalysisConfig, "explorer=true", "explorer: unknown field; did you mean analysis.explorer?;"),
        (PipelineConfig, "examples=64", "examples: unknown field; did you mean circuits.discovery.examples?"),
        (PipelineConfig, "circuits.examples=64",
         "circuits.examples: unknown field; did you mean circuits.discovery.examples?"),
        (FinetuneConfig, "lr=0.1", "lr: unknown field; did you mean train.lr?"),
        (FinetuneConfig, "train.learning_rate=1", "train.learning_rate: unknown field;"),  # none to name
    ],
)  # fmt: skip
def test_an_unknown_field_names_where_the_schema_has_it(schema, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(schema, None, [override])
    assert message in f"{error.value};"  # the field's whole message


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(FinetuneConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(FinetuneConfig, broken)


def test_data_config_checks_perturbation_ratios():
    with pytest.raises(ConfigError, match="perturb_ratios"):
        load_config(DataConfig, None, ["tasks=[{name: addsub, range: 100}]", "perturb_ratios=[0.5, 1.5]"])


def test_finetune_config_rejects_what_deepspeed_cannot_run_before_ray_starts():
    from ftcircuits.finetune.settings import MethodConfig, TrainConfig

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


def test_a_sample_seed_draws_the_same_seeded_rows_in_split_order():
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


def test_critical_k_is_a_share_of_the_layers_unless_given():
    assert AnalysisSettings().critical_count(6) == 1  # round(0.2 * 6)
    assert AnalysisSettings().critical_count(24) == 5  # the authors' k = 5 of 24
    assert AnalysisSettings(critical_k=3).critical_count(6) == 3
    assert AnalysisSettings(critical_k=9).critical_count(6) == 6
