"""Sequence continuation, arithmetic and geometric (paper.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from ftcircuits.tasks.item import Draft

SEQUENCE_PREFIX = "Derive the following sequence: "


def _prompt(terms: list[int]) -> str:
    return SEQUENCE_PREFIX + "".join(f"{t}, " for t in terms).rstrip(" ")


@dataclass(frozen=True)
class Sequence:
    """``Derive the following sequence: t0, t1, t2, t3,`` -> t4.

    Arithmetic: start 1..500, step 1..100; geometric: start 1..10, ratio
    2..10. Corrupted: one of the last two shown terms gets + U(1, 100).
    ``geometric_share`` of the items are geometric; few geometric prompts have
    a single-token answer, so that share repeats prompts with distinct
    corruptions (the manifest reports unique prompts per kind).
    """

    geometric_share: float = 0.2
    name: ClassVar[str] = "sequence"
    default_size: ClassVar[int] = 5000

    def kinds(self) -> dict[str, float]:
        return {"arithmetic": 1 - self.geometric_share, "geometric": self.geometric_share}

    def parameters(self) -> dict:
        return {"geometric_share": self.geometric_share}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        if kind == "arithmetic":
            start, step = rng.randint(1, 500), rng.randint(1, 100)
            terms = [start + i * step for i in range(5)]
        else:
            start, ratio = rng.randint(1, 10), rng.randint(2, 10)
            terms = [start * ratio**i for i in range(5)]
        shown = terms[:4]
        corrupted = list(shown)
        corrupted[rng.choice((2, 3))] += rng.randint(1, 100)
        return Draft(_prompt(shown), str(terms[4]), _prompt(corrupted), None, kind)
