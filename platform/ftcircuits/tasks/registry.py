"""Registry of task families by name, and construction from a validated spec."""

from __future__ import annotations

from ftcircuits.tasks.arithmetic import ADDSUB_RANGES, COMPOSITIONAL_PARTS, AddSub, Compositional, MulDiv
from ftcircuits.tasks.function import Function
from ftcircuits.tasks.item import TaskFamily
from ftcircuits.tasks.lcm import LCM
from ftcircuits.tasks.sequence import Sequence

TASKS: dict[str, type] = {
    AddSub.name: AddSub,
    MulDiv.name: MulDiv,
    Sequence.name: Sequence,
    LCM.name: LCM,
    Function.name: Function,
    Compositional.name: Compositional,
}


class TaskSpecError(ValueError):
    """A task name or parameter is not allowed."""


def task_family(name: str, **parameters) -> TaskFamily:
    """Return the family ``name`` with ``parameters``; raise TaskSpecError naming what is wrong."""
    if name not in TASKS:
        raise TaskSpecError(f"unknown task {name!r}; allowed: {', '.join(sorted(TASKS))}")
    if name == "addsub" and parameters.get("range", 100) not in ADDSUB_RANGES:
        raise TaskSpecError(f"addsub range must be one of {ADDSUB_RANGES}, got {parameters['range']!r}")
    if name == "compositional" and parameters.get("part", "full") not in COMPOSITIONAL_PARTS:
        raise TaskSpecError(
            f"compositional part must be one of {COMPOSITIONAL_PARTS}, got {parameters['part']!r}"
        )
    if name == "sequence" and not 0 <= parameters.get("geometric_share", 0.2) <= 1:
        raise TaskSpecError(f"geometric_share must be in [0, 1], got {parameters['geometric_share']!r}")
    try:
        return TASKS[name](**parameters)
    except TypeError as error:
        raise TaskSpecError(f"task {name!r} does not take parameters {sorted(parameters)}: {error}") from None
