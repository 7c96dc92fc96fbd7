"""The circuit engine's settings: how one circuit is discovered (EAP-IG attribution, metric, batch,
edge selection) and on which items."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.selection import Selection
from ftcircuits.options import AttributionMethod, Intervention, Metric, SelectionMethod, Split, StepConvention
from ftcircuits.schema import Strict

if TYPE_CHECKING:
    import polars as pl


class DiscoverySettings(Strict):
    """How a circuit is discovered: on which items, EAP-IG attribution and metric, batch, edge selection.

    Every field shapes the circuit (all of them key a run's circuits on disk); how many threads or actors
    compute it is not here.
    """

    split: Split = "circuit"
    examples: int | None = Field(
        None, ge=1, description="a sample of N items of the split, drawn with sample_seed (default: all)"
    )
    sample_seed: int | None = Field(
        0,
        description="with examples: a random sample of N items drawn with this seed (None: the first N, "
        "which in a dataset ordered by kind may all be of one kind)",
    )
    method: AttributionMethod = "eap-ig-inputs"
    intervention: Intervention = Field(
        "patching",
        description="what replaces a source's output, in the scores and in the circuit's evaluation: its "
        "output on the corrupted prompt (patching), zeros, or its mean over the discovered items (mean); "
        "eap-ig-inputs and clean-corrupted take patching only",
    )
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
    curve: bool = Field(False, description="also its faithfulness against budget (ten budgets, 0.1%..100%)")

    @model_validator(mode="after")
    def _check_attribution(self) -> DiscoverySettings:
        self.attribution_config()  # an intervention the method cannot take is refused here, by name
        return self

    def attribution_config(self) -> AttributionConfig:
        """Return the attribution engine's config of these settings."""
        return AttributionConfig(
            self.method, self.steps, self.step_convention, self.metric, self.intervention
        )

    def selection_config(self) -> Selection:
        """Return the circuit selection of these settings."""
        return Selection(self.selection, self.budget)

    def sample(self, items: pl.DataFrame) -> pl.DataFrame:
        """Return the items circuits are discovered on: all, the first ``examples`` or a seeded sample."""
        if not self.examples or self.examples >= items.height:
            return items
        if self.sample_seed is None:
            return items.head(self.examples)
        rows = items.with_row_index("_row").sample(self.examples, seed=self.sample_seed)
        return rows.sort("_row").drop("_row")  # the same rows of every perturbed variant, in split order
