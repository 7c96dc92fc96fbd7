"""``jobs.compare_attribution``'s schema: every attribution method and intervention on a fine-tuning run's
base and final checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS
from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.config.discovery import complete_run
from ftcircuits.options import AttributionMethod, Intervention, choices
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.schema import Strict


class AttributionCompareConfig(Strict):
    """``jobs.compare_attribution``: the circuit of the run's base (step 0) and final checkpoint under every
    (method, intervention) pair, each with its faithfulness curve, time and agreement with exact patching."""

    run: Path = Field(description="a fine-tuning run (jobs.finetune): its step 0 and its last checkpoint")
    discovery: DiscoverySettings = Field(
        DiscoverySettings(examples=128),
        description="shared by every cell; its method and intervention are each cell's own",
    )
    checkpoints: list[Literal["base", "final"]] = Field(
        default_factory=lambda: ["base", "final"],
        description="the run's step 0 (base) and its last checkpoint (final); one of them splits the work "
        "over processes that share out's cells",
    )
    methods: list[AttributionMethod] = Field(
        default_factory=lambda: list(choices(AttributionMethod)),
        description="exact is the ground truth of the agreement columns (without it they are empty)",
    )
    interventions: list[Intervention] = Field(
        default_factory=lambda: list(choices(Intervention)),
        description="pairs a method cannot take (clean-corrupted, eap-ig-inputs: patching only) are "
        "skipped with a note",
    )
    budgets: list[float] = Field(
        default_factory=lambda: list(DEFAULT_BUDGETS),
        description="the faithfulness curve's edge budgets (CPR, CMD: its areas)",
    )
    threads: int = Field(2, ge=1, description="torch threads")
    out: Path = Path("runs/attribution")

    def pairs(self) -> tuple[list[tuple[AttributionMethod, Intervention]], list[str]]:
        """Return the (method, intervention) pairs to compare (interventions, then methods, in order) and a
        note per pair skipped because the method cannot take the intervention."""
        pairs, notes = [], []
        attribution = self.discovery.attribution_config()
        for intervention in self.interventions:
            for method in self.methods:
                try:
                    replace(attribution, method=method, intervention=intervention)
                except ValueError as error:
                    notes.append(f"{method} with {intervention} skipped: {error}")
                    continue
                pairs.append((method, intervention))
        return pairs, notes

    @model_validator(mode="after")
    def _some_pair_is_valid(self) -> AttributionCompareConfig:
        pairs, notes = self.pairs()
        if not pairs:
            raise ValueError("no (method, intervention) pair to compare: " + "; ".join(notes))
        return self

    @field_validator("run")
    @classmethod
    def _run_has_base_and_final(cls, run: Path) -> Path:
        if not complete_run(run):
            return run  # a damaged file: the stage names it, before any work
        steps = read_checkpoint_index(run)["step"].to_list()
        if steps[0] != 0 or len(steps) < 2:
            raise ValueError(
                f"the run at {str(run)!r} has checkpoints at steps {steps}: comparing base and final needs "
                "step 0 and a later one"
            )
        return run

    @field_validator("checkpoints", "methods", "interventions")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if not values or len(set(values)) != len(values):
            raise ValueError(f"must be distinct and not empty, got {values}")
        return values

    @field_validator("budgets")
    @classmethod
    def _budgets_are_shares(cls, budgets: list[float]) -> list[float]:
        distinct = sorted(set(budgets))
        if len(distinct) < 2 or not all(0 < b <= 1 for b in distinct):
            raise ValueError(f"budgets must be two or more distinct shares of edges in (0, 1], got {budgets}")
        return distinct
