"""A preset path checked to exist, and ``jobs.make_data``'s config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from ftcircuits.models.source import ModelSource
from ftcircuits.schema import Strict
from ftcircuits.tasks.spec import PERTURB_RATIOS, TaskSpec


def _existing_preset(path: Path) -> Path:
    if not Path(path).is_file():
        raise ValueError(f"fine-tuning preset {str(path)!r} does not exist")
    return path


PresetPath = Annotated[Path, AfterValidator(_existing_preset)]
"""A fine-tuning preset file another job runs, checked to exist before any work."""


class DataConfig(Strict):
    """``jobs.make_data``: build task datasets under a model's tokenizer."""

    tasks: list[TaskSpec]
    model: ModelSource = "tiny"
    out: Path = Path("data")
    perturb_ratios: list[float] = Field(default_factory=lambda: list(PERTURB_RATIOS))

    @field_validator("perturb_ratios")
    @classmethod
    def _ratios_in_unit_interval(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"perturbation ratios must lie in (0, 1), got {bad}")
        return ratios
