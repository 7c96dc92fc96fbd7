"""What replaces a source's output where an edge is intervened on, in scoring and in evaluation.

``patching`` takes the source's output on the corrupted prompt, ``zero`` zeros, and ``mean`` the
source's mean output over the discovery's items (``source_means``, computed once per discovery): one
d-vector per source, averaged over every real token of the clean prompts. A mean per position
(the reference's ``mean-positional``) is left out: right-padded prompts of different lengths share
no positions, so a position's mean would mix different tokens of different prompts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.options import Intervention, check_choice


@torch.no_grad()
def source_means(probe: ModelProbe, batches: Iterable[PairBatch]) -> torch.Tensor:
    """Return every source's mean output over the real tokens of the clean prompts ``[n_sources, d]``,
    in the score dtype, on the model's device."""
    sums: torch.Tensor | None = None
    tokens = 0
    for batch in batches:
        mask = batch.clean.attention_mask[:, :, None]
        if sums is None:
            sums = torch.zeros(probe.graph.n_sources, probe.arch.d_model, dtype=probe.score_dtype,
                               device=mask.device)  # fmt: skip

        def add(first: int, outputs: torch.Tensor, mask=mask, sums=sums) -> None:
            weighted = outputs.to(sums.dtype) * mask.to(sums.dtype)
            sums[first : first + len(outputs)] += weighted.sum(dim=(1, 2))

        probe.write_sources(batch.clean, batch.clean.input_ids, add)
        tokens += int(batch.clean.attention_mask.sum())
    if sums is None or tokens == 0:
        raise ValueError("source means need at least one item with a real token")
    return sums / tokens


def check_intervention(intervention: Intervention, means: torch.Tensor | None) -> None:
    """Raise ValueError for an unknown intervention, or for ``mean`` without the sources' means."""
    check_choice(Intervention, intervention, "intervention")
    if intervention == "mean" and means is None:
        raise ValueError("intervention 'mean' needs the sources' means (interventions.source_means)")


@torch.no_grad()
def write_replacements(
    probe: ModelProbe, batch: PairBatch, buffer: torch.Tensor, intervention: Intervention,
    means: torch.Tensor | None = None,
) -> None:  # fmt: skip
    """Fill the source-major ``buffer [n_sources, B, T, d]`` with every source's replacement output."""
    check_intervention(intervention, means)
    if intervention == "patching":
        probe.write_sources(
            batch.clean, batch.corrupted_ids, lambda s, out: buffer[s : s + len(out)].copy_(out)
        )
    elif intervention == "zero":
        buffer.zero_()
    else:
        buffer.copy_(means[:, None, None, :].to(buffer.device))
