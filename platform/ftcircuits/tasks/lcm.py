"""Least common multiple with one in-context example (paper.md)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

from ftcircuits.tasks.item import Draft

LCM_PREFIX = "Calculate the least common multiple (LCM) of two numbers. "
PAIR_KINDS = ("multiple", "coprime", "common_factor")


def lcm_pair(rng: random.Random, kind: str) -> tuple[int, int]:
    """Return a pair of ``kind``: one a multiple of the other, coprime, or sharing a factor > 1."""
    if kind == "multiple":
        a, k = rng.randint(2, 50), rng.randint(2, 10)
        pair = (a, a * k)
    elif kind == "coprime":
        while True:
            pair = (rng.randint(2, 40), rng.randint(2, 40))
            if pair[0] != pair[1] and math.gcd(*pair) == 1:
                break
    elif kind == "common_factor":
        while True:
            g, x, y = rng.randint(2, 12), rng.randint(2, 15), rng.randint(2, 15)
            if x != y and math.gcd(x, y) == 1 and x % y and y % x:
                pair = (g * x, g * y)
                break
    else:
        raise ValueError(f"unknown LCM pair kind {kind!r}; allowed: {', '.join(PAIR_KINDS)}")
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


def _lcm(pair: tuple[int, int]) -> int:
    return pair[0] * pair[1] // math.gcd(*pair)


def _prompt(example: tuple[int, int], query: tuple[int, int]) -> str:
    return f"{LCM_PREFIX}LCM({example[0]}, {example[1]}) = {_lcm(example)}, LCM({query[0]}, {query[1]}) ="


@dataclass(frozen=True)
class LCM:
    """``... LCM(20, 160) = 160, LCM(8, 64) =`` -> 64; corrupted: a query pair with a different LCM."""

    name: ClassVar[str] = "lcm"
    default_size: ClassVar[int] = 2500

    def kinds(self) -> dict[str, float]:
        return {kind: 1 / 3 for kind in PAIR_KINDS}

    def parameters(self) -> dict:
        return {}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        example = lcm_pair(rng, rng.choice(PAIR_KINDS))
        query = lcm_pair(rng, kind)
        while True:
            other = lcm_pair(rng, kind)
            if _lcm(other) != _lcm(query):
                break
        return Draft(
            _prompt(example, query), str(_lcm(query)), _prompt(example, other), str(_lcm(other)), kind
        )
