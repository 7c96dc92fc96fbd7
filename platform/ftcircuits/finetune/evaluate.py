"""Accuracy: batched exact match of the next token after the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ftcircuits.finetune.encoding import last_token_logits, pad_prompts, prompt_ids, require_answer_ids


@torch.no_grad()
def predicted_tokens(
    model: torch.nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 256,
    padding_side: str = "right",
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
    padding_side: str = "right",
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
    padding_side: str = "right",
) -> float:
    """Return top-1 exact-match accuracy of the next token after each prompt."""
    hits = correct_answers(model, tokenizer, prompts, answers, batch_size, padding_side)
    return sum(hits) / len(hits) if hits else float("nan")


def task_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items,  # polars.DataFrame with prompt, answer, kind
    batch_size: int = 256,
) -> dict[str, float]:
    """Return accuracy overall (key "all") and per kind on a dataset frame."""
    import polars as pl

    hits = correct_answers(model, tokenizer, items["prompt"].to_list(), items["answer"].to_list(), batch_size)
    scored = items.select("kind").with_columns(pl.Series("hit", hits, dtype=pl.Float64))
    per_kind = scored.group_by("kind").agg(pl.col("hit").mean()).sort("kind")
    return {"all": float(scored["hit"].mean()), **dict(per_kind.iter_rows())}
