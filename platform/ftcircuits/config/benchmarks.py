"""Schemas of the benchmarks and of the tiny model's pre-training job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from ftcircuits.config.data import Strict
from ftcircuits.models.shapes import known_shapes
from ftcircuits.options import Device, Precision
from ftcircuits.paths import TINY_BASE_DIR


def _known(shapes: list[str]) -> list[str]:
    known = known_shapes()
    unknown = [s for s in shapes if s not in known]
    if unknown or not shapes:
        raise ValueError(f"unknown shapes {unknown or 'none'}; allowed: {', '.join(known)}")
    return shapes


Shapes = Annotated[list[str], AfterValidator(_known)]  # model shapes shipped with the project


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

    shapes: Shapes = Field(default_factory=lambda: ["gpt2", "pythia-1.4b-deduped"])
    batch: int = Field(4, ge=1)
    length: int = Field(24, ge=4)
    steps: int = Field(5, ge=1)
    threads: int = Field(2, ge=1)
    skip_slow: bool = Field(False, description="skip the slow reference scorer")
    repeats: int = Field(3, ge=1, description="runs of each way (median time, max memory)")
    precision: Precision = Field("fp32", description="model dtype; bf16 also runs fp32 activations")
    device: Device = "cpu"
    layers: int | None = Field(None, ge=1, description="the shapes' layer count (default: per shape)")


class BenchExactConfig(Strict):
    """``jobs.bench_exact``: exact patching of the shipped tiny model's edges, stacked copies against one
    pass per edge."""

    batch: int = Field(128, ge=1, description="prompt pairs (addsub, range 100)")
    sample: int = Field(200, ge=1, description="edges both ways score (one pass per edge is slow)")
    full: bool = Field(True, description="also time the stacked way on every edge")
    copies: int | None = Field(
        None, ge=1, description="edges per stacked pass (default: the memory plan's, memory.exact_copies)"
    )
    threads: int = Field(2, ge=1)
    seed: int = 0


PAPER_PRESETS = [Path(f"jobs/configs/finetune-{m}.yaml") for m in ("pythia-1.4b", "gpt-neo-2.7b", "opt-6.7b")]


class BenchGpuConfig(Strict):
    """``jobs.bench_gpu``: every plain-PyTorch core on the paper's shapes (random weights, no Ray), next to
    the plan's estimates: EAP-IG against the floor, one evaluation and a faithfulness curve, and a
    DeepSpeed step of each fine-tuning preset on one GPU."""

    device: Device | None = Field(None, description="default: cuda when available, else cpu")
    shapes: Shapes = Field(
        default_factory=lambda: ["pythia-1.4b-deduped", "gpt-neo-2.7B", "opt-6.7b", "tinyllama-1.1b", "gpt2"]
    )
    batches: list[int] | None = Field(None, description="every shape's batches (default: per shape)")
    length: int | None = Field(
        None, ge=4, description="tokens per prompt (default: 24, gpt2 16; fine-tuning: the plan's figure)"
    )
    steps: int = Field(5, ge=1, description="EAP-IG interpolation steps m")
    layers: int | None = Field(None, ge=1, description="cut every shape to its first N layers (a smoke run)")
    repeats: int = Field(
        3, ge=1, description="runs of each EAP-IG way (median time, max memory); timed optimiser steps"
    )
    budget: float = Field(0.05, gt=0, le=1, description="the evaluated circuit's share of edges")
    curve_budgets: list[float] | None = Field(
        None, description="the faithfulness curve's edge budgets (default: jobs.circuits' ten, 0.1%..100%)"
    )
    skip_finetune: bool = False
    presets: list[Path] = Field(
        default_factory=lambda: list(PAPER_PRESETS),
        description="fine-tuning presets to step (those of the shapes run)",
    )
    threads: int | None = Field(None, ge=1, description="torch threads on CPU (default: torch's)")
    out: Path | None = Field(None, description="a directory for bench_gpu.txt and bench_gpu.json")

    @field_validator("curve_budgets")
    @classmethod
    def _budgets_are_shares(cls, budgets: list[float] | None) -> list[float] | None:
        if budgets is not None and (not budgets or not all(0 < b <= 1 for b in budgets)):
            raise ValueError(f"curve_budgets must be shares of edges in (0, 1], got {budgets}")
        return budgets

    @field_validator("batches")
    @classmethod
    def _positive_batches(cls, batches: list[int] | None) -> list[int] | None:
        if batches is not None and (not batches or min(batches) < 1):
            raise ValueError(f"batches must be positive, got {batches}")
        return batches


class BenchFinetuneConfig(Strict):
    """``jobs.bench_finetune``: the plain loop vs 1 and 2 Ray + DeepSpeed workers."""

    items: int = Field(2000, ge=50, description="dataset size (80% is trained on, one epoch)")
    micro_batch: int = Field(16, ge=1)


class BenchCircuitsConfig(Strict):
    """``jobs.bench_circuits``: circuits over a run with reused actors vs a fresh Ray task per checkpoint."""

    run: Path = Path("runs/finetune-tiny")
    examples: int = Field(64, ge=1, description="pairs per circuit")


class BenchExplorerConfig(Strict):
    """``jobs.bench_explorer``: the circuit explorer page of a synthetic run over a model shape's graph
    (random scores as real circuit files), its size and its interactions' times in headless Chromium."""

    shape: str = Field("pythia-1.4b-deduped", description="the model shape whose graph the run has")
    checkpoints: int = Field(5, ge=2)
    budget: float = Field(0.05, gt=0, le=1, description="the circuit files' budget")
    prune: bool = Field(False, description="prune dead nodes (random scores leave many: fewer edges drawn)")
    repeats: int = Field(10, ge=1, description="rounds of the interactions (median and largest time)")
    seed: int = 0
    out: Path = Path("runs/bench-explorer")

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, shape: str) -> str:
        return _known([shape])[0]
