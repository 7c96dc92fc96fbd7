"""One task item and the protocol every task family implements."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Protocol

# Instruction prefix of Add/Sub, Mul/Div and the compositional task (paper.md).
ARITHMETIC_PREFIX = (
    "Calculate the result of the following arithmetic expression and provide only the final answer: "
)


@dataclass(frozen=True)
class Draft:
    """A clean/corrupted prompt pair before tokenizer checks.

    ``answer`` is the clean prompt's next token; ``corrupted_answer`` the
    corrupted prompt's (None where it is not a single number). ``kind`` is the
    family's sub-type (operator, sequence kind, pair kind).
    """

    prompt: str
    answer: str
    corrupted_prompt: str
    corrupted_answer: str | None
    kind: str


class TaskFamily(Protocol):
    """A generator of drafts for one task, deterministic under a ``random.Random``."""

    name: ClassVar[str]
    default_size: ClassVar[int]

    def kinds(self) -> dict[str, float]:
        """Return each kind and its share of the items."""
        ...

    def draw(self, rng: random.Random, kind: str) -> Draft:
        """Return one draft of ``kind``."""
        ...

    def parameters(self) -> dict:
        """Return the parameters that define this task (for the manifest)."""
        ...
