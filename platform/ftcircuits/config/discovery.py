"""Circuit schemas: how a circuit is discovered, and the circuit jobs' configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.selection import Selection
from ftcircuits.config.data import ModelSource, Strict
from ftcircuits.options import (
    AttributionMethod,
    Baseline,
    Metric,
    NodeRule,
    ScoreRule,
    SelectionMethod,
    Split,
    StepConvention,
)
from ftcircuits.run_layout import check_run, index_path
from ftcircuits.tasks.io import MANIFEST_FILE


class DiscoverySettings(Strict):
    """How a circuit is discovered: EAP-IG attribution, metric and edge selection (shared by circuit jobs)."""

    split: Split = "circuit"
    examples: int | None = Field(None, ge=1, description="N items of the split (default: all)")
    sample_seed: int | None = Field(
        0,
        description="with examples: a random sample of N items drawn with this seed (None: the first N, "
        "which in a dataset ordered by kind may all be of one kind)",
    )
    method: AttributionMethod = "eap-ig-inputs"
    steps: int = Field(5, ge=1)
    step_convention: StepConvention = "k=1..m"
    metric: Metric = "kl"
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        32,
        description="pairs per EAP-IG batch, or auto: the largest batch the device's free memory holds "
        "(circuits/memory.py); an explicit batch that cannot fit is refused before any work",
    )
    selection: SelectionMethod = "top"
    budget: float = Field(0.05, gt=0, le=1, description="the circuit's share of the graph's edges")
    curve: bool = False
    threads: int = Field(2, ge=1, description="torch threads per process (per actor in a run)")

    def attribution_config(self) -> AttributionConfig:
        """Return the attribution engine's config of these settings."""
        return AttributionConfig(self.method, self.steps, self.step_convention, self.metric)

    def selection_config(self) -> Selection:
        """Return the circuit selection of these settings."""
        return Selection(self.selection, self.budget)

    def discovery_key(self) -> dict:
        """Return the settings that change a circuit (its part of the output key), not the plumbing."""
        return self.model_dump(mode="json", include=set(DiscoverySettings.model_fields) - {"threads"})

    def sample(self, items: pl.DataFrame) -> pl.DataFrame:
        """Return the items circuits are discovered on: all, the first ``examples`` or a seeded sample."""
        if not self.examples or self.examples >= items.height:
            return items
        if self.sample_seed is None:
            return items.head(self.examples)
        rows = items.with_row_index("_row").sample(self.examples, seed=self.sample_seed)
        return rows.sort("_row").drop("_row")  # the same rows of every perturbed variant, in split order


class CircuitJobConfig(DiscoverySettings):
    """``jobs.circuits``: discover a circuit of a model on a dataset split."""

    model: ModelSource = "tiny"
    data: Path
    out: Path = Path("runs/circuits")

    @field_validator("data")
    @classmethod
    def _dataset_exists(cls, data: Path) -> Path:
        if not (Path(data) / MANIFEST_FILE).is_file():
            raise ValueError(f"no dataset at {str(data)!r} ({MANIFEST_FILE} missing; run jobs.make_data)")
        return data


class CircuitRunConfig(DiscoverySettings):
    """``jobs.circuits --run``: circuits of the base and every checkpoint of a fine-tuning run, on Ray.

    With ``robustness``, also the circuits of the base and of each baseline of the same shape
    (``baselines``: random init, random at the base's per-tensor scale, permuted base weights, or a
    random init briefly trained on the tiny pre-training corpus) on every perturbed variant of the
    circuit split.
    """

    run: Path
    examples: int | None = Field(256, ge=1, description="first N items of the split (default: all)")
    curve: bool = Field(True, description="each checkpoint circuit's faithfulness against budget")
    robustness: bool = True
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["random-init", "random-scaled", "permuted"],
        description="robustness: the base against these (briefly-trained costs a short pre-training)",
    )
    robustness_ratios: list[float] | None = Field(
        None, description="robustness: these perturbation ratios of the dataset's (default: all)"
    )
    random_seed: int = 0
    brief_steps: int = Field(200, ge=1, description="briefly-trained: optimiser steps on the tiny corpus")
    actors: int = Field(2, ge=1, description="long-lived actors, each holding the base model once")
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0, description="fractions share a GPU between actors")
    in_flight_per_actor: int = Field(2, ge=1, description="units queued per actor (bounds memory)")
    retries: int = Field(2, ge=0, description="restarts of a dead actor and retries of its unit")
    threads: int = Field(1, ge=1, description="torch threads per actor")

    @model_validator(mode="after")
    def _robustness_needs_the_circuit_split(self) -> CircuitRunConfig:
        if self.robustness and self.split != "circuit":
            raise ValueError("robustness compares perturbed circuit splits: it needs split='circuit'")
        return self

    @field_validator("run")
    @classmethod
    def _run_is_complete(cls, run: Path) -> Path:
        index = index_path(run)
        if not index.is_file():
            raise ValueError(f"no fine-tuning run at {str(run)!r} ({index} missing; run jobs.finetune)")
        try:
            check_run(run)
        except FileNotFoundError as error:
            raise ValueError(f"incomplete fine-tuning run at {str(run)!r}: {error}") from None
        return run


class AnalysisConfig(CircuitRunConfig):
    """``jobs.analyze``: dynamics of the circuits ``jobs.circuits --run`` found with the same settings."""

    critical_k: int | None = Field(
        None, ge=1, description="top-k critical layers (capped at the layer count)"
    )
    critical_k_share: float = Field(
        0.2, gt=0, lt=1, description="without critical_k: k = max(1, round(share * layers)), as CircuitLoRA"
    )

    def critical_count(self, layers: int) -> int:
        """Return k of the top-k critical layers for a model of ``layers`` layers."""
        k = self.critical_k if self.critical_k is not None else max(1, round(self.critical_k_share * layers))
        return min(k, layers)


class CompositionalConfig(DiscoverySettings):
    """``jobs.compositional``: merge the subtasks' circuits and test them on the compositional task."""

    model: ModelSource = "tiny"
    data: Path = Field(Path("runs/compositional/data"), description="datasets built here when missing")
    examples: int | None = Field(256, ge=1, description="first N items of each split (default: all)")
    budgets: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1])
    nodes: NodeRule = "union"
    score: ScoreRule = "mean"
    out: Path = Path("runs/compositional")

    @field_validator("budgets")
    @classmethod
    def _budgets_are_shares(cls, budgets: list[float]) -> list[float]:
        bad = [b for b in budgets if not 0 < b <= 1]
        if bad or not budgets:
            raise ValueError(f"budgets must be shares of edges in (0, 1], got {bad or 'none'}")
        return sorted(budgets)
