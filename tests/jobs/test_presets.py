"""Every shipped preset validates against its job's schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcircuits.config.loading import load_config
from ftcircuits.config.study import StudyConfig
from ftcircuits.config.training import FinetuneConfig

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
SCHEMAS = {"tiny.yaml": StudyConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_validates(path):
    schema = SCHEMAS.get(path.name, FinetuneConfig if path.name.startswith("finetune-") else None)
    assert schema is not None, f"no schema known for preset {path.name}"
    config = load_config(schema, path)
    if isinstance(config, FinetuneConfig) and config.model != "tiny":
        assert config.train.micro_batch_size * config.train.grad_accumulation == 32  # the paper's batch
