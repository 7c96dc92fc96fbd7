"""Every shipped preset validates against its job's schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.dynamics import MultiSeedConfig
from ftcircuits.config.loading import load_config
from ftcircuits.config.sweep import SweepConfig
from ftcircuits.finetune.settings import FinetuneConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs"
SCHEMAS = {
    "circuitlora-tiny.yaml": CircuitLoraConfig,
    "compare-tiny.yaml": CompareConfig,
    "compare-tiny-tasks.yaml": CompareConfig,
    "compare-pipeline.yaml": CompareConfig,
    "dynamics-tiny-3seeds.yaml": MultiSeedConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets name other presets relative to the repository root
    schema = SCHEMAS.get(path.name, FinetuneConfig if path.name.startswith("finetune-") else None)
    assert schema is not None, f"no schema known for preset {path.name}"
    config = load_config(schema, path)
    if isinstance(config, FinetuneConfig) and config.model != "tiny":
        assert config.train.micro_batch_size * config.train.grad_accumulation == 32  # the paper's batch


@pytest.mark.parametrize("path", sorted((ROOT / "tuning" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_sweep_preset_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(SweepConfig, path)
    assert config.trials == 6 and config.space.ranks == "matched" and config.finetune_config.is_file()


def test_comparison_preset_compares_every_method_at_matched_parameter_counts(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(CompareConfig, CONFIGS / "compare-tiny.yaml")
    names = ["lora", "circuitlora-matched", "circuitlora-swept", "adalora", "ia3", "fpft"]
    assert [arm.name for arm in config.arms] == names
    assert config.seeds == [0, 1, 2] and [t.dataset_name() for t in config.tasks] == ["addsub-100"]
    assert {arm.circuitlora.ranks.choice for arm in config.arms if arm.circuitlora} == {"matched"}
