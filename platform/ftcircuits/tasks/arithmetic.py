"""Add/Sub, Mul/Div and the compositional task ``(a ± b) op c`` (paper.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import ClassVar

from ftcircuits.tasks.item import ARITHMETIC_PREFIX, Draft

ADDSUB_RANGES = (100, 200, 300, 400, 500)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def _expression(a: int, op: str, b: int) -> str:
    return f"{ARITHMETIC_PREFIX}{a} {op} {b} ="


def _addsub_draft(a: int, op: str, b: int) -> Draft:
    """Clean ``a op b``; corrupted flips the operator (+ <-> -) on the same numbers."""
    flipped = "-" if op == "+" else "+"
    return Draft(
        prompt=_expression(a, op, b),
        answer=str(_apply(a, op, b)),
        corrupted_prompt=_expression(a, flipped, b),
        corrupted_answer=str(_apply(a, flipped, b)),
        kind=op,
    )


@dataclass(frozen=True)
class AddSub:
    """``<prefix>a ± b =`` with a, b in [1, R] (a >= b for "-"); half each operator."""

    range: int = 100
    name: ClassVar[str] = "addsub"
    default_size: ClassVar[int] = 5000

    def kinds(self) -> dict[str, float]:
        return {"+": 0.5, "-": 0.5}

    def parameters(self) -> dict:
        return {"range": self.range}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        a, b = rng.randint(1, self.range), rng.randint(1, self.range)
        if kind == "-":
            a, b = max(a, b), min(a, b)
        return _addsub_draft(a, kind, b)


def _muldiv_draft(rng: random.Random, kind: str) -> Draft:
    if kind == "*":
        a, b = rng.randint(2, 200), rng.randint(2, 180)
        other = rng.choice([n for n in range(2, 100) if n != a])
        return Draft(_expression(a, "*", b), str(a * b), _expression(other, "*", b), str(other * b), "*")
    b, x = rng.randint(2, 200), rng.randint(2, 200)
    other = rng.choice([n for n in range(2, 201) if n != x])
    return Draft(_expression(b * x, "/", b), str(x), _expression(b * other, "/", b), str(other), "/")


@dataclass(frozen=True)
class MulDiv:
    """``<prefix>a * b =`` (a in [2,200], b in [2,180]) and ``<prefix>b*x / b =`` (b, x in [2,200]).

    Corrupted: for "*" the first operand becomes a random 2..99; for "/" the
    dividend becomes another multiple of the divisor.
    """

    name: ClassVar[str] = "muldiv"
    default_size: ClassVar[int] = 2000

    def kinds(self) -> dict[str, float]:
        return {"*": 0.5, "/": 0.5}

    def parameters(self) -> dict:
        return {}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        return _muldiv_draft(rng, kind)


COMPOSITIONAL_PARTS = ("full", "inner", "outer")


@dataclass(frozen=True)
class Compositional:
    """``<prefix>(a ± b) op c =`` and its two subtasks, from the same draws.

    Inner ``a ± b`` as in Add/Sub (a, b in [1, inner_range]); outer op is "*"
    (c in [2, 20]) or "/" (c a divisor of the inner result). Corrupted: only
    the outer operand c changes (for the inner subtask, the operator flips).
    ``part`` selects the full task ("full"), the inner Add/Sub expression
    ("inner") or the outer Mul/Div expression on the inner result ("outer").
    """

    part: str = "full"
    inner_range: int = 100
    name: ClassVar[str] = "compositional"
    default_size: ClassVar[int] = 5000

    def kinds(self) -> dict[str, float]:
        return {"+*": 0.25, "-*": 0.25, "+/": 0.25, "-/": 0.25}

    def parameters(self) -> dict:
        return {"part": self.part, "inner_range": self.inner_range}

    def draw(self, rng: random.Random, kind: str) -> Draft:
        inner_op, outer_op = kind[0], kind[1]
        while True:
            a, b = rng.randint(1, self.inner_range), rng.randint(1, self.inner_range)
            if inner_op == "-":
                a, b = max(a, b), min(a, b)
            r = _apply(a, inner_op, b)
            if outer_op == "*":
                choices = list(range(2, 21))
            else:
                choices = [d for d in range(2, r + 1) if r % d == 0]
            if len(choices) >= 2:
                break
        c, c2 = rng.sample(choices, 2)
        if self.part == "inner":
            return replace(_addsub_draft(a, inner_op, b), kind=kind)
        if self.part == "outer":
            return Draft(
                _expression(r, outer_op, c),
                str(_apply(r, outer_op, c)),
                _expression(r, outer_op, c2),
                str(_apply(r, outer_op, c2)),
                kind,
            )
        head = f"{ARITHMETIC_PREFIX}({a} {inner_op} {b}) {outer_op} "
        return Draft(
            f"{head}{c} =", str(_apply(r, outer_op, c)), f"{head}{c2} =", str(_apply(r, outer_op, c2)), kind
        )
