"""Metrics at the prompt's last position, written as losses (lower = closer to the clean behaviour).

Sign convention: an edge's score is ``(z_u(corrupted) - z_u(clean)) . dL/dx_v``
with L the loss below, so the input node's scores sum (with many IG steps) to
``L(corrupted) - L(clean)``: positive where the corruption hurts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MetricName = Literal["kl", "kl_vocab_mean", "logit_diff", "prob"]
METRICS: tuple[str, ...] = ("kl", "kl_vocab_mean", "logit_diff", "prob")


def metric_loss(
    name: str,
    logits: torch.Tensor,
    clean_logits: torch.Tensor,
    answers: torch.Tensor,
    corrupted_answers: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the per-example loss ``[N]`` from last-position logits ``[N, vocab]``.

    kl: KL(clean || model) summed over the vocabulary; kl_vocab_mean: the same
    divided by the vocabulary size (the authors' code); logit_diff: minus the
    clean answer's logit over the corrupted answer's; prob: minus the answer's
    probability.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    if name in ("kl", "kl_vocab_mean"):
        clean_logp = F.log_softmax(clean_logits.to(dtype), dim=-1)
        kl = (clean_logp.exp() * (clean_logp - F.log_softmax(logits, dim=-1))).sum(-1)
        return kl / logits.shape[-1] if name == "kl_vocab_mean" else kl
    rows = torch.arange(logits.shape[0], device=logits.device)
    if name == "logit_diff":
        if corrupted_answers is None:
            raise ValueError("metric 'logit_diff' needs the corrupted answers")
        return -(logits[rows, answers] - logits[rows, corrupted_answers])
    if name == "prob":
        return -F.softmax(logits, dim=-1)[rows, answers]
    raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
