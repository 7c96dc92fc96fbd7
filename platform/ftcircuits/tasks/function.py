"""Function evaluation ``y = ax + b`` (paper.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from ftcircuits.tasks.item import Draft


def _prompt(a: int, b: int) -> str:
    ys = ",".join(str(a * x + b) for x in (1, 2, 3))
    return f"There is a function y={a}x+{b}. Given x=1,2,3,4, y={ys},"


@dataclass(frozen=True)
class Function:
    """``There is a function y=5x+75. Given x=1,2,3,4, y=80,85,90,`` -> 95.

    a in [1, 20], b in [1, 500]; corrupted: same slope, another intercept.
    """

    name: ClassVar[str] = "function"
    default_size: ClassVar[int] = 5000

    def kinds(self) -> dict[str, float]:
        return {"linear": 1.0}

    def parameters(self) -> dict:
        return {}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        a, b = rng.randint(1, 20), rng.randint(1, 500)
        other = rng.choice([n for n in range(1, 501) if n != b])
        return Draft(_prompt(a, b), str(4 * a + b), _prompt(a, other), str(4 * a + other), kind)
