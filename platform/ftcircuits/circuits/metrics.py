"""Metrics at the prompt's last position, written as losses (lower = closer to the clean behaviour).

Sign convention: an edge's score is ``(z_u(corrupted) - z_u(clean)) . dL/dx_v``
with L the loss below, so the input node's scores sum (with many IG steps) to
``L(corrupted) - L(clean)``: positive where the corruption hurts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftcircuits.options import Metric, check_choice


def kl_divergence(
    p_logits: torch.Tensor, q_logits: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return KL(p || q) per example ``[N]``, summed over the vocabulary, from logits ``[N, vocab]``.

    Computed in ``dtype``, or the inputs' dtype if wider.
    """
    dtype = torch.promote_types(torch.promote_types(p_logits.dtype, q_logits.dtype), dtype)
    log_p = F.log_softmax(p_logits.to(dtype), dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits.to(dtype), dim=-1))).sum(-1)


def metric_loss(
    name: Metric,
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
    check_choice(Metric, name, "metric")
    if name in ("kl", "kl_vocab_mean"):
        kl = kl_divergence(clean_logits, logits)
        return kl / logits.shape[-1] if name == "kl_vocab_mean" else kl
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    rows = torch.arange(logits.shape[0], device=logits.device)
    if name == "logit_diff":
        if corrupted_answers is None:
            raise ValueError("metric 'logit_diff' needs the corrupted answers")
        return -(logits[rows, answers] - logits[rows, corrupted_answers])
    return -F.softmax(logits, dim=-1)[rows, answers]
