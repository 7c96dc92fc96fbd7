"""The one prompt/answer format shared by tasks, training, circuits and accuracy (a leaf).

A prompt is tokenized as the model's tokenizer does by default (the tiny
tokenizer adds ``[BOS]``); the answer is the single next token after the
prompt, found as the extra token of ``prompt + " " + answer``. Training
puts the loss on that token at the prompt's last position and accuracy
reads the same position, so both use exactly the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from ftcircuits.options import PaddingSide, check_choice

if TYPE_CHECKING:  # polars only where a frame is read: the bare-GPU benchmark imports this without it
    import polars as pl


class AnswerTokenError(ValueError):
    """An answer is not exactly one token after its prompt."""


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Return the token ids of each prompt, special tokens included."""
    return tokenizer(list(prompts), add_special_tokens=True)["input_ids"]


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str]
) -> list[int | None]:
    """Return each answer's single token id after its prompt, or None where it is not one token."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    bare = prompt_ids(tokenizer, prompts)
    full = prompt_ids(tokenizer, [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)])
    result: list[int | None] = []
    for head, whole in zip(bare, full, strict=True):
        single = len(whole) == len(head) + 1 and whole[: len(head)] == head
        result.append(whole[-1] if single and whole[-1] != tokenizer.unk_token_id else None)
    return result


def require_answer_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str]
) -> list[int]:
    """Return each answer's token id; raise AnswerTokenError naming the first multi-token answer."""
    ids = answer_token_ids(tokenizer, prompts, answers)
    for prompt, answer, token in zip(prompts, answers, ids, strict=True):
        if token is None:
            raise AnswerTokenError(f"answer {answer!r} after prompt {prompt!r} is not one token")
    return ids  # type: ignore[return-value]


@dataclass(frozen=True)
class PromptBatch:
    """Padded prompts with the position of each prompt's last real token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    last_index: torch.Tensor

    def repeat(self, times: int) -> PromptBatch:
        """Return the batch stacked ``times`` times along the batch axis."""
        fields = (self.input_ids, self.attention_mask, self.position_ids, self.last_index)
        return PromptBatch(*(t.repeat(times, *[1] * (t.dim() - 1)) for t in fields))

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.last_index))
        )


def pad_prompts(ids: Sequence[Sequence[int]], pad_id: int, side: PaddingSide = "right") -> PromptBatch:
    """Pad token id lists on ``side`` ("left" or "right").

    Position ids count real tokens only, so learned-position models see the
    same positions under either padding side.
    """
    check_choice(PaddingSide, side, "padding side")
    if not ids:
        raise ValueError("cannot pad an empty list of prompts")
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    last = torch.full((len(ids),), width - 1, dtype=torch.long) if side == "left" else mask.sum(dim=1) - 1
    return PromptBatch(input_ids, mask, positions, last)


IGNORE_INDEX = -100  # label of positions that carry no loss (PyTorch's cross-entropy default)


@dataclass(frozen=True)
class LabelledBatch:
    """Token ids with a target token at some positions (``IGNORE_INDEX`` elsewhere).

    ``labels[i, t]`` is the token the model must predict *after* position t, so
    a prompt's answer sits at the prompt's last position, as accuracy reads it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> LabelledBatch:
        return LabelledBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.labels))
        )


def answer_batch(batch: PromptBatch, answers: torch.Tensor) -> LabelledBatch:
    """Label each prompt's last real position with its answer token; nothing else."""
    labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    labels[torch.arange(labels.shape[0]), batch.last_index] = answers
    return LabelledBatch(batch.input_ids, batch.attention_mask, batch.position_ids, labels)


def model_logits(model: torch.nn.Module, batch: PromptBatch | LabelledBatch, input_ids=None) -> torch.Tensor:
    """Return all-position logits of ``batch`` (optionally with other token ids of the same shape)."""
    return model(
        input_ids=batch.input_ids if input_ids is None else input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits


def last_token_logits(model: torch.nn.Module, batch: PromptBatch, input_ids=None) -> torch.Tensor:
    """Return the logits at each prompt's last real token, shape (batch, vocab)."""
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    return model_logits(model, batch, input_ids)[rows, batch.last_index]


# --- accuracy: batched exact match of the next token after the prompt ---------------------------
@torch.no_grad()
def predicted_tokens(
    model: torch.nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 256,
    padding_side: PaddingSide = "right",
) -> torch.Tensor:
    """Return the arg-max next token after each prompt (token id lists), on CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), batch_size):
        batch = pad_prompts(ids[start : start + batch_size], pad_id, padding_side).to(device)
        out.append(last_token_logits(model, batch).argmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def correct_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 256,
    padding_side: PaddingSide = "right",
) -> list[bool]:
    """Return, per prompt, whether the model's top-1 next token is the answer token."""
    targets = torch.tensor(require_answer_ids(tokenizer, prompts, answers), dtype=torch.long)
    predicted = predicted_tokens(
        model, prompt_ids(tokenizer, prompts), tokenizer.pad_token_id, batch_size, padding_side
    )
    return (predicted == targets).tolist()


def accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 256,
    padding_side: PaddingSide = "right",
) -> float:
    """Return top-1 exact-match accuracy of the next token after each prompt."""
    hits = correct_answers(model, tokenizer, prompts, answers, batch_size, padding_side)
    return sum(hits) / len(hits) if hits else float("nan")


def task_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: pl.DataFrame,
    batch_size: int = 256,
) -> dict[str, float]:
    """Return accuracy overall (key "all") and per kind on a dataset frame."""
    import polars as pl

    hits = correct_answers(model, tokenizer, items["prompt"].to_list(), items["answer"].to_list(), batch_size)
    scored = items.select("kind").with_columns(pl.Series("hit", hits, dtype=pl.Float64))
    per_kind = scored.group_by("kind").agg(pl.col("hit").mean()).sort("kind")
    return {"all": float(scored["hit"].mean()), **dict(per_kind.iter_rows())}
