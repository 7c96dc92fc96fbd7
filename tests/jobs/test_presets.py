"""Every shipped preset validates against its job's schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.loading import load_config
from ftcircuits.config.study import StudyConfig
from ftcircuits.config.sweep import SweepConfig
from ftcircuits.config.training import FinetuneConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs"
SCHEMAS = {"tiny.yaml": StudyConfig, "circuitlora-tiny.yaml": CircuitLoraConfig}


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
