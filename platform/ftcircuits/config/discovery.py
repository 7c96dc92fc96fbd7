"""The circuit jobs' schemas: one model's circuit, the circuits over a fine-tuning run (robustness,
actors), their analysis, and the compositional merge. Each nests the engine's ``DiscoverySettings``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.integrity import DamagedFileError
from ftcircuits.models.source import ModelSource
from ftcircuits.options import Baseline, NodeRule, ScoreRule
from ftcircuits.run_layout import check_run, index_path
from ftcircuits.schema import Strict
from ftcircuits.tasks.io import MANIFEST_FILE


def _dataset_exists(data: Path) -> Path:
    if not (Path(data) / MANIFEST_FILE).is_file():
        raise ValueError(f"no dataset at {str(data)!r} ({MANIFEST_FILE} missing; run jobs.make_data)")
    return data


def complete_run(run: Path) -> bool:
    """Check, for a config's validator, that ``run`` is a whole fine-tuning run (ValueError naming what is
    missing); return False when one of its files is damaged, which is not a config error: the stage names
    it, before any work."""
    index = index_path(run)
    if not index.is_file():
        raise ValueError(f"no fine-tuning run at {str(run)!r} ({index} missing; run jobs.finetune)")
    try:
        check_run(run)
    except FileNotFoundError as error:
        raise ValueError(f"incomplete fine-tuning run at {str(run)!r}: {error}") from None
    except DamagedFileError:
        return False
    return True


class RebuildOption(Strict):
    """``rebuild``, for the jobs whose circuits stage is cached: ``jobs.circuits --run``, the pipeline, the
    dynamics, and the reference circuits of CircuitLoRA, the method comparison and the sweep."""

    rebuild: bool = Field(
        False,
        description="redo the cached circuits whose files are damaged (checked before reuse; without "
        "it a damaged file stops the job naming it); not in the cache key",
    )


class CircuitJobConfig(Strict):
    """``jobs.circuits --model --data``: discover a circuit of a model on a dataset split."""

    model: ModelSource = "tiny"
    data: Path
    discovery: DiscoverySettings = DiscoverySettings()
    threads: int = Field(2, ge=1, description="torch threads")
    out: Path = Path("runs/circuits")

    _data_exists = field_validator("data")(_dataset_exists)


class RobustnessSettings(Strict):
    """The robustness circuits over a run: the base and each baseline of its shape (a random init, random
    at the base's per-tensor scale, the base's weights permuted, or a random init briefly trained on the
    tiny pre-training corpus) on every perturbed variant of the circuit split."""

    enabled: bool = True
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["random-init", "random-scaled", "permuted"],
        description="the base against these (briefly-trained costs a short pre-training)",
    )
    ratios: list[float] | None = Field(
        None, description="these perturbation ratios of the dataset's (default: all of them)"
    )
    random_seed: int = Field(0, description="the baselines' seed")
    brief_steps: int = Field(200, ge=1, description="briefly-trained: optimiser steps on the tiny corpus")


class ActorSettings(Strict):
    """How the circuits over a run are computed on Ray: long-lived actors, each holding the base once."""

    count: int = Field(2, ge=1, description="actors")
    cpus: float = Field(1, gt=0, description="CPUs per actor")
    gpus: float = Field(0, ge=0, description="GPUs per actor (fractions share a GPU between actors)")
    in_flight: int = Field(2, ge=1, description="units queued per actor (bounds memory)")
    retries: int = Field(2, ge=0, description="restarts of a dead actor and retries of its unit")
    threads: int = Field(1, ge=1, description="torch threads per actor")


class CircuitRunSettings(Strict):
    """How the circuits of a fine-tuning run are found: the base and every checkpoint (each with its
    faithfulness against budget), and with robustness the base and its baselines on perturbed splits."""

    discovery: DiscoverySettings = DiscoverySettings(examples=256, curve=True)
    robustness: RobustnessSettings = RobustnessSettings()
    actors: ActorSettings = ActorSettings()
    ground_truth: bool = Field(
        False,
        description="also every checkpoint's circuit by exact patching (method=exact: each edge patched on "
        "its own, slow), cached apart, so the analysis measures the method's agreement with it; changes "
        "no circuit of the method (not in its cache key)",
    )

    @model_validator(mode="after")
    def _robustness_needs_the_circuit_split(self) -> CircuitRunSettings:
        if self.robustness.enabled and self.discovery.split != "circuit":
            raise ValueError(
                "robustness compares perturbed circuit splits: it needs discovery.split='circuit' "
                "(or robustness.enabled=false)"
            )
        return self


class CircuitRunConfig(CircuitRunSettings, RebuildOption):
    """``jobs.circuits --run``: circuits of the base and every checkpoint of a fine-tuning run, on Ray."""

    run: Path

    @field_validator("run")
    @classmethod
    def _run_is_complete(cls, run: Path) -> Path:
        complete_run(run)
        return run


class AnalysisSettings(Strict):
    """How a run's circuits are analysed: how many critical layers the top-k rule marks."""

    critical_k: int | None = Field(
        None, ge=1, description="top-k critical layers (capped at the layer count)"
    )
    critical_k_share: float = Field(
        0.2, gt=0, lt=1, description="without critical_k: k = max(1, round(share * layers)), as CircuitLoRA"
    )
    explorer: bool = Field(
        False, description="also write the interactive circuit explorer (explorer.html) beside the tables"
    )

    def critical_count(self, layers: int) -> int:
        """Return k of the top-k critical layers for a model of ``layers`` layers."""
        k = self.critical_k if self.critical_k is not None else max(1, round(self.critical_k_share * layers))
        return min(k, layers)


class AnalysisConfig(CircuitRunConfig):
    """``jobs.analyze``: dynamics of the circuits ``jobs.circuits --run`` found with the same settings."""

    analysis: AnalysisSettings = AnalysisSettings()


class CompositionalConfig(Strict):
    """``jobs.compositional``: merge the subtasks' circuits and test them on the compositional task."""

    model: ModelSource = "tiny"
    data: Path = Field(Path("runs/compositional/data"), description="datasets built here when missing")
    discovery: DiscoverySettings = DiscoverySettings(examples=256)
    budgets: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1])
    nodes: NodeRule = "union"
    score: ScoreRule = "mean"
    threads: int = Field(2, ge=1, description="torch threads")
    out: Path = Path("runs/compositional")

    @field_validator("budgets")
    @classmethod
    def _budgets_are_shares(cls, budgets: list[float]) -> list[float]:
        bad = [b for b in budgets if not 0 < b <= 1]
        if bad or not budgets:
            raise ValueError(f"budgets must be shares of edges in (0, 1], got {bad or 'none'}")
        return sorted(budgets)
