"""Caches keyed by everything that shapes a result: the circuits' settings hash, a fine-tuning run's identity
and the pipeline's accuracy tables. Each field changed in turn must change the key, or a stated reason says
why it leaves the result unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.config.discovery import (
    ActorSettings,
    CircuitRunConfig,
    CircuitRunSettings,
    RebuildOption,
    RobustnessSettings,
)
from ftcircuits.finetune.run_identity import run_record
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.study.accuracy import accuracy_key, cached_accuracy
from ftcircuits.study.over_run import RunInputs, settings_hash
from ftcircuits.tasks.io import MANIFEST_FILE

DISCOVERY_CHANGES = {
    "split": "finetune", "examples": 7, "sample_seed": 3, "method": "eap", "intervention": "zero", "steps": 3,
    "step_convention": "k=0..m-1", "metric": "logit_diff", "batch_size": 4, "selection": "greedy",
    "budget": 0.1, "curve": False,
}  # fmt: skip
ROBUSTNESS_CHANGES = {"random_seed": 1, "brief_steps": 50}
# Fields that leave every unit's circuit as it is, and why.
UNCHANGED = {
    ("robustness", "enabled"): False,  # which units exist; a unit's key names what it is of
    ("robustness", "baselines"): ["permuted"],  # the same: a baseline's units are keyed by its kind
    ("robustness", "ratios"): [0.5],  # the same: a perturbed unit's key holds its ratio
    **{("actors", name): value for name, value in {
        "count": 1, "cpus": 2.0, "gpus": 0.5, "in_flight": 1, "retries": 0, "threads": 2,
    }.items()},  # how the work is spread over Ray actors: no circuit depends on it
}  # fmt: skip


# Options of the jobs whose circuits stage is cached, beyond its settings (and the run), and why they leave
# every circuit as it is.
JOB_OPTIONS_UNCHANGED = {
    "rebuild": True,  # redoes only the damaged units, into the same cache: their circuits are the same
}


def dataset(directory: Path, content: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).write_text(json.dumps({"content_hash": content}))
    return directory


@pytest.fixture()
def inputs(tmp_path) -> RunInputs:
    return RunInputs("tiny", dataset(tmp_path / "data", "abc"), pl.DataFrame(), identity="run-1")


def with_field(settings: CircuitRunSettings, section: str, name: str, value) -> CircuitRunSettings:
    part = getattr(settings, section).model_copy(update={name: value})
    return settings.model_copy(update={section: part})


def test_every_field_of_the_circuit_settings_is_either_keyed_or_explained():
    fields = {("discovery", f) for f in DiscoverySettings.model_fields}
    fields |= {("robustness", f) for f in RobustnessSettings.model_fields}
    fields |= {("actors", f) for f in ActorSettings.model_fields}
    keyed = {("discovery", f) for f in DISCOVERY_CHANGES} | {("robustness", f) for f in ROBUSTNESS_CHANGES}
    assert keyed | set(UNCHANGED) == fields and not keyed & set(UNCHANGED)


def test_every_option_of_a_cached_circuits_job_beyond_its_settings_is_explained(inputs):
    options = set(CircuitRunConfig.model_fields) - set(CircuitRunSettings.model_fields) - {"run"}
    assert options == set(RebuildOption.model_fields) == set(JOB_OPTIONS_UNCHANGED)
    config = CircuitRunConfig.model_construct(**dict(CircuitRunSettings()), run=Path("run"))
    for name, value in JOB_OPTIONS_UNCHANGED.items():
        assert getattr(config, name) != value
        changed_config = config.model_copy(update={name: value})
        assert (
            settings_hash(changed_config, inputs)
            == settings_hash(config, inputs)
            == settings_hash(CircuitRunSettings(), inputs)
        )


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [("discovery", k, v) for k, v in DISCOVERY_CHANGES.items()]
    + [("robustness", k, v) for k, v in ROBUSTNESS_CHANGES.items()],
)
def test_a_field_that_shapes_a_circuit_changes_the_circuits_hash(inputs, section, name, value):
    settings = CircuitRunSettings()
    assert getattr(getattr(settings, section), name) != value
    new = with_field(settings, section, name, value)
    assert settings_hash(new, inputs) != settings_hash(settings, inputs)


@pytest.mark.parametrize(("section", "name"), list(UNCHANGED))
def test_a_field_that_only_chooses_units_or_spreads_work_keeps_the_hash(inputs, section, name):
    settings = CircuitRunSettings()
    value = UNCHANGED[section, name]
    assert getattr(getattr(settings, section), name) != value
    new = with_field(settings, section, name, value)
    assert settings_hash(new, inputs) == settings_hash(settings, inputs)


def test_the_run_and_its_datasets_content_change_the_circuits_hash(tmp_path, inputs):
    settings = CircuitRunSettings()
    other_run = RunInputs(inputs.base_model, inputs.data, inputs.checkpoints, identity="run-2")
    other_data = RunInputs(inputs.base_model, dataset(tmp_path / "other", "abd"), inputs.checkpoints, "run-1")
    hashes = {settings_hash(settings, x) for x in (inputs, other_run, other_data)}
    assert len(hashes) == 3


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("rank_pattern", "alpha_pattern", "lr_groups"):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


RUN_CHANGES = {
    "model": "shape:gpt2", "task.name": "lcm", "task.range": 200, "task.part": "inner",
    "task.geometric_share": 0.5, "task.size": 99, "task.seed": 1, "task.circuit_share": 0.3,
    "method.name": "ia3", "method.r": 4, "method.alpha": 3, "method.dropout": 0.1,
    "method.rank_pattern": {"layers.0": 2}, "method.alpha_pattern": {"layers.0": 4},
    "method.adalora_init_r": 6, "method.adalora_tinit": 5, "method.adalora_tfinal": 6,
    "method.adalora_delta_t": 2, "method.trainable_tokens": ["+"], "train.lr": 0.01, "train.epochs": 3,
    "train.micro_batch_size": 4, "train.grad_accumulation": 2, "train.warmup_steps": 3,
    "train.weight_decay": 0.0, "train.seed": 1, "train.checkpoint_every": 5, "train.lr_groups": {"x": 0.1},
    "deepspeed.zero_stage": 0, "deepspeed.precision": "bf16", "scaling.workers": 1, "scaling.use_gpu": True,
    "scaling.cpus_per_worker": 2.0, "scaling.gpus_per_worker": 1.0, "eval_batch_size": 64, "out": "elsewhere",
}  # fmt: skip


def changed(config, path: str, value):
    """Return ``config`` with the field at dotted ``path`` set to ``value``, unvalidated (any combination)."""
    head, _, rest = path.partition(".")
    return config.model_copy(update={head: changed(getattr(config, head), rest, value) if rest else value})


def test_every_field_of_a_finetuning_run_is_covered():
    assert set(RUN_CHANGES) == set(leaves(FinetuneConfig().model_dump(mode="json")))


@pytest.mark.parametrize(("path", "value"), list(RUN_CHANGES.items()))
def test_every_field_of_a_finetuning_run_changes_its_identity(tmp_path, path, value):
    """The whole config identifies a run (a changed one is refused in the same ``out``; its circuits are
    keyed apart): even the resources, which leave the weights as they are, since a run is one config."""
    base = FinetuneConfig()
    assert leaves(base.model_dump(mode="json"))[path] != value
    assert run_record(changed(base, path, value), tmp_path) != run_record(base, tmp_path)


def test_the_accuracy_cache_is_keyed_by_weights_datasets_sample_and_batch(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    datasets = {"addsub-100": dataset(tmp_path / "addsub-100", "h1")}
    key = accuracy_key(model, datasets, 256, 500)
    assert accuracy_key(model, datasets, 256, 500) == key
    others = [
        accuracy_key(model, datasets | {"lcm": dataset(tmp_path / "lcm", "h2")}, 256, 500),  # another task
        accuracy_key(model, {"addsub-100": dataset(tmp_path / "rebuilt", "h3")}, 256, 500),  # new content
        accuracy_key(model, datasets, 64, 500),  # padding changes the arithmetic
        accuracy_key(model, datasets, 256, 100),  # another sample
        accuracy_key(tmp_path / "other-model", datasets, 256, 500),
    ]
    (model / "model.safetensors").write_bytes(b"retrained weights")  # same path, other weights
    others.append(accuracy_key(model, datasets, 256, 500))
    assert all(other != key for other in others) and len({json.dumps(o) for o in others}) == len(others)

    path, calls = tmp_path / "base.json", []

    def compute() -> dict[str, float]:
        calls.append(1)
        return {"addsub-100": 0.25 * len(calls)}

    assert cached_accuracy(path, key, compute) == {"addsub-100": 0.25}
    assert cached_accuracy(path, key, compute) == {"addsub-100": 0.25} and len(calls) == 1  # reused
    assert cached_accuracy(path, others[0], compute) == {"addsub-100": 0.5} and len(calls) == 2  # redone
