"""Clean/corrupted prompt pairs as padded batches: what attribution and evaluation run on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import PromptBatch, pad_prompts, prompt_ids, require_answer_ids

if TYPE_CHECKING:  # frames arrive from the caller: attribution (PairBatch) imports this without polars
    import polars as pl


class PairLengthError(ValueError):
    """A clean and a corrupted prompt have different token lengths."""


@dataclass(frozen=True)
class PairBatch:
    """Clean and corrupted prompts of equal token length, padded alike, with their answers."""

    clean: PromptBatch
    corrupted_ids: torch.Tensor
    answers: torch.Tensor
    corrupted_answers: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PairBatch:
        other = None if self.corrupted_answers is None else self.corrupted_answers.to(device)
        return PairBatch(self.clean.to(device), self.corrupted_ids.to(device), self.answers.to(device), other)


def pair_batches(
    tokenizer: PreTrainedTokenizerBase,
    items: pl.DataFrame,
    batch_size: int,
    device: torch.device | str = "cpu",
    need_corrupted_answers: bool = False,
) -> list[PairBatch]:
    """Return right-padded batches of (clean, corrupted) pairs; check everything before any model work."""
    clean = prompt_ids(tokenizer, items["prompt"].to_list())
    corrupted = prompt_ids(tokenizer, items["corrupted_prompt"].to_list())
    for index, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
        if len(a) != len(b):
            raise PairLengthError(
                f"item {index}: clean prompt has {len(a)} tokens but corrupted prompt has {len(b)}: "
                f"{items['prompt'][index]!r} vs {items['corrupted_prompt'][index]!r}"
            )
    answers = require_answer_ids(tokenizer, items["prompt"].to_list(), items["answer"].to_list())
    other = None
    if need_corrupted_answers:
        if items["corrupted_answer"].null_count():
            raise ValueError("metric needs a one-token corrupted answer for every item; some are missing")
        other = require_answer_ids(
            tokenizer, items["corrupted_prompt"].to_list(), items["corrupted_answer"].to_list()
        )
    batches = []
    for start in range(0, len(clean), batch_size):
        rows = slice(start, start + batch_size)
        padded = pad_prompts(clean[rows], tokenizer.pad_token_id, "right")
        padded_corrupted = pad_prompts(corrupted[rows], tokenizer.pad_token_id, "right")
        batches.append(
            PairBatch(
                padded,
                padded_corrupted.input_ids,
                torch.tensor(answers[rows]),
                None if other is None else torch.tensor(other[rows]),
            ).to(device)
        )
    return batches


def longest_prompt(tokenizer: PreTrainedTokenizerBase, items: pl.DataFrame) -> int:
    """Return the token length of the longest clean prompt of ``items`` (what a batch pads to at most)."""
    return max(len(ids) for ids in prompt_ids(tokenizer, items["prompt"].to_list()))
