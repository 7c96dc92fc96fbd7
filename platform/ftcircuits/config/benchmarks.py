"""Schemas of the benchmarks and of the tiny model's pre-training job."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ftcircuits.config.data import Strict
from ftcircuits.models.shapes import known_shapes
from ftcircuits.options import Device, Precision
from ftcircuits.paths import TINY_BASE_DIR


class PretrainConfig(Strict):
    """``jobs.pretrain_tiny``: the recipe of the shipped tiny base model (deterministic)."""

    steps: int = Field(2800, ge=1)
    batch_size: int = Field(64, ge=1)
    seq_len: int = Field(64, ge=16)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    layers: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    d_model: int = Field(128, ge=8)
    threads: int = Field(2, ge=1)
    out: Path = TINY_BASE_DIR


class BenchEapConfig(Strict):
    """``jobs.bench_eap``: EAP-IG against the floor and the slow reference on random-weight shapes."""

    shapes: list[str] = Field(default_factory=lambda: ["gpt2", "pythia-1.4b-deduped"])
    batch: int = Field(4, ge=1)
    length: int = Field(24, ge=4)
    steps: int = Field(5, ge=1)
    threads: int = Field(2, ge=1)
    skip_slow: bool = Field(False, description="skip the slow reference scorer")
    repeats: int = Field(3, ge=1, description="runs of each way (median time, max memory)")
    precision: Precision = Field("fp32", description="model dtype; bf16 also runs fp32 activations")
    device: Device = "cpu"
    layers: int | None = Field(None, ge=1, description="the shapes' layer count (default: per shape)")

    @field_validator("shapes")
    @classmethod
    def _known_shapes(cls, shapes: list[str]) -> list[str]:
        known = known_shapes()
        unknown = [s for s in shapes if s not in known]
        if unknown or not shapes:
            raise ValueError(f"unknown shapes {unknown or 'none'}; allowed: {', '.join(known)}")
        return shapes


class BenchFinetuneConfig(Strict):
    """``jobs.bench_finetune``: the plain loop vs 1 and 2 Ray + DeepSpeed workers."""

    items: int = Field(2000, ge=50, description="dataset size (80% is trained on, one epoch)")
    micro_batch: int = Field(16, ge=1)


class BenchCircuitsConfig(Strict):
    """``jobs.bench_circuits``: circuits over a run with reused actors vs a fresh Ray task per checkpoint."""

    run: Path = Path("runs/finetune-tiny")
    examples: int = Field(64, ge=1, description="pairs per circuit")
