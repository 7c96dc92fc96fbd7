"""Per-head views of attention weights, read off the architecture's layout (no model-type branches).

q/k/v projections come as ``QKVProjection``s: a module, the parts it
produces (("q", "k", "v") for a fused module, one part otherwise) and its
weights viewed as ``[parts, heads, d_head, d_model]``, so that the output of
head h of part p is ``W[p, h] @ x + b[p, h]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ftcircuits.models.architecture import Architecture


@dataclass(frozen=True)
class QKVProjection:
    """One q/k/v projection module of a layer and its per-head weights."""

    module: torch.nn.Module
    parts: tuple[str, ...]
    layout: str
    heads: tuple[int, ...]  # heads per part
    d_head: int
    transposed: bool = False  # weights stored [in, out] (GPT-2's Conv1D)

    def weight(self) -> torch.Tensor:
        """Return the weights as ``[parts, heads, d_head, d_model]`` (a view where possible)."""
        w = self.module.weight
        if self.transposed:
            w = w.T
        d_model = w.shape[-1]
        if self.layout == "interleaved":
            return w.view(self.heads[0], 3, self.d_head, d_model).transpose(0, 1)
        return w.reshape(len(self.parts), self.heads[0], self.d_head, d_model)

    def bias(self) -> torch.Tensor | None:
        """Return the bias as ``[parts, heads, d_head]``, or None."""
        b = self.module.bias
        if b is None:
            return None
        if self.layout == "interleaved":
            return b.view(self.heads[0], 3, self.d_head).transpose(0, 1)
        return b.view(len(self.parts), self.heads[0], self.d_head)

    def split_output(self, out: torch.Tensor) -> torch.Tensor:
        """Return the module output ``[..., parts*heads*d_head]`` as ``[..., parts, heads, d_head]``."""
        lead = out.shape[:-1]
        if self.layout == "interleaved":
            return out.view(*lead, self.heads[0], 3, self.d_head).transpose(-3, -2)
        return out.view(*lead, len(self.parts), self.heads[0], self.d_head)

    def merge_output(self, parts: torch.Tensor) -> torch.Tensor:
        """Inverse of ``split_output``."""
        lead = parts.shape[:-3]
        if self.layout == "interleaved":
            return parts.transpose(-3, -2).reshape(*lead, -1)
        return parts.reshape(*lead, -1)


def qkv_projections(model: torch.nn.Module, arch: Architecture, layer: int) -> list[QKVProjection]:
    """Return the q/k/v projections of ``layer`` in q, k, v order."""
    modules = dict(model.named_modules())
    names = [n.format(i=layer) for n in arch.names.qkv]
    layout = arch.names.qkv_layout
    if layout in ("interleaved", "blocks"):
        (name,) = names
        heads = (arch.heads,) * 3
        return [QKVProjection(modules[name], ("q", "k", "v"), layout, heads, arch.d_head, arch.names.conv1d)]
    heads = (arch.heads, arch.kv_heads, arch.kv_heads)
    return [
        QKVProjection(modules[n], (part,), "separate", (h,), arch.d_head)
        for n, part, h in zip(names, "qkv", heads, strict=True)
    ]


def out_projection_heads(model: torch.nn.Module, arch: Architecture, layer: int) -> torch.Tensor:
    """Return the output projection as ``[heads, d_head, d_model]``: head h writes ``W[h].T @ z_h``."""
    module = dict(model.named_modules())[arch.names.attention_out.format(i=layer)]
    w = module.weight
    if arch.names.conv1d:
        return w.view(arch.heads, arch.d_head, -1)  # Conv1D [in=H*dh, out=d]
    return w.view(-1, arch.heads, arch.d_head).permute(1, 2, 0)
