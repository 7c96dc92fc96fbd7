"""A task as data: its family name and parameters, size, seed and split share (``TaskSpec``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ftcircuits.options import CompositionalPart, choices
from ftcircuits.schema import Strict
from ftcircuits.tasks.item import TaskFamily
from ftcircuits.tasks.registry import TASKS, TaskSpecError, task_family


class TaskSpec(Strict):
    """One task: its family name and parameters, size and seed."""

    name: str
    range: int | None = Field(None, description="addsub operand range R in {100..500}")
    part: CompositionalPart | None = None
    geometric_share: float | None = Field(None, ge=0, le=1)
    size: int | None = Field(None, ge=10, description="items before the split; default: the paper's")
    seed: int = 0
    circuit_share: float = Field(0.2, gt=0, lt=1)

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sorted(TASKS))}")
        return name

    @model_validator(mode="after")
    def _parameters_fit_task(self) -> TaskSpec:
        try:
            self.family()
        except TaskSpecError as error:
            raise ValueError(str(error)) from None
        return self

    def parameters(self) -> dict[str, Any]:
        """Return the family parameters that are set."""
        fields = {"range": self.range, "part": self.part, "geometric_share": self.geometric_share}
        return {k: v for k, v in fields.items() if v is not None}

    def family(self) -> TaskFamily:
        return task_family(self.name, **self.parameters())

    def dataset_name(self) -> str:
        """Return a file-system name such as ``addsub-100`` or ``compositional-inner``."""
        values = [str(v) for k, v in sorted(self.parameters().items()) if k != "geometric_share"]
        return "-".join([self.name, *values])

    def items(self) -> int:
        return self.size or self.family().default_size


PERTURB_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # robustness: shares of items replaced


def all_paper_tasks() -> list[TaskSpec]:
    """Return one spec per task of the paper (Add/Sub at every range, compositional and its parts)."""
    specs = [TaskSpec(name="addsub", range=r) for r in (100, 200, 300, 400, 500)]
    specs += [TaskSpec(name=n) for n in ("muldiv", "sequence", "lcm", "function")]
    specs += [TaskSpec(name="compositional", part=p) for p in choices(CompositionalPart)]
    return specs
