"""A model's modules as the circuit graph sees them, shared by attribution and evaluation.

Source outputs are handled *source-major*, ``[n_sources, B, T, d]``: the sources a destination reads
are a prefix of the sources, so ``buffer[:before]`` is one contiguous ``[before, B*T*d]`` matrix and
every per-destination sum over sources, positions and width is a plain matrix product against it,
with no copy of the buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.encoding import PromptBatch, last_token_logits
from ftcircuits.models.architecture import Architecture
from ftcircuits.models.heads import out_projection_heads, qkv_projections
from ftcircuits.models.hooks import Hook, module_hooks

# write(first_source, outputs [k, B, T, d]): called once per source group, in forward order
SourceWrite = Callable[[int, torch.Tensor], None]


class ModelProbe:
    """Module lookups of one model (embedding, norms, projections, outputs) and its source outputs."""

    def __init__(self, model: torch.nn.Module, arch: Architecture) -> None:
        self.model, self.arch, self.graph = model, arch, Graph.of(arch)
        modules = dict(model.named_modules())
        names = arch.names
        layers = range(arch.layers)
        self.embed = modules[names.embed]
        self.unembed = modules[names.unembed]
        self.blocks = [modules[names.layer.format(i=i)] for i in layers]  # the decoder layers
        self.final_norm = modules[names.final_norm]
        self.attention_norms = [modules[names.attention_norm.format(i=i)] for i in layers]
        self.mlp_norms = [modules[names.mlp_norm.format(i=i)] for i in layers]
        self.attention_outs = [modules[names.attention_out.format(i=i)] for i in layers]
        self.mlp_outs = [modules[names.mlp_out.format(i=i)] for i in layers]
        self.projections = [qkv_projections(model, arch, i) for i in layers]
        self.out_heads = [out_projection_heads(model, arch, i) for i in layers]
        self.activation_dtype = next(model.parameters()).dtype  # what attribution keeps activations in
        self.score_dtype = torch.promote_types(self.activation_dtype, torch.float32)  # what scores sum in

    def run(self, batch: PromptBatch, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return last-position logits of ``batch`` (optionally with other token ids)."""
        return last_token_logits(self.model, batch, input_ids)

    def source_hooks(self, shape: torch.Size, write: SourceWrite) -> tuple[list[Hook], list[Hook]]:
        """Return (forward, pre) hooks that hand every source's output to ``write`` as ``[k, B, T, d]``.

        ``shape`` is the batch's ``(B, T)``. The input is source 0, a layer's heads follow its earlier
        sources and its MLP its heads, as in the graph.
        """
        graph, (batch, length) = self.graph, shape

        def output_of(source: int):  # OPT runs its MLP on flattened [B*T, d] states
            def hook(module, inputs, output) -> None:  # returns nothing: the output is not replaced
                write(source, output.view(1, batch, length, -1))

            return hook

        def heads(layer: int):
            def hook(module, args) -> None:
                outputs = self.head_outputs(layer, args[0]).view(self.arch.heads, batch, length, -1)
                write(graph.head_source(layer, 0), outputs)

            return hook

        forward = [(self.embed, output_of(0))]
        pre = []
        for layer in range(self.arch.layers):
            pre.append((self.attention_outs[layer], heads(layer)))
            forward.append((self.mlp_outs[layer], output_of(graph.mlp_source(layer))))
        return forward, pre

    @torch.no_grad()
    def write_sources(self, batch: PromptBatch, input_ids: torch.Tensor, write: SourceWrite) -> torch.Tensor:
        """Run ``batch`` with ``input_ids``, handing every source's output to ``write``; return the
        last-position logits."""
        with module_hooks(*self.source_hooks(input_ids.shape, write)):
            return self.run(batch, input_ids)

    def source_buffer(self, batch: PromptBatch, dtype: torch.dtype) -> torch.Tensor:
        """Return an uninitialised source-major buffer ``[n_sources, B, T, d]`` for ``batch``."""
        device = batch.input_ids.device
        return torch.empty(self.graph.n_sources, *batch.input_ids.shape, self.arch.d_model, dtype=dtype,
                           device=device)  # fmt: skip

    @torch.no_grad()
    def source_outputs(
        self, batch: PromptBatch, input_ids: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return every source's output ``[B, T, n_sources, d]`` (a view of a source-major buffer),
        zero at padding, and the last-position logits.

        The outputs are in ``dtype`` (default: the score dtype, float32 or wider).
        """
        buffer = self.source_buffer(batch, dtype or self.score_dtype)
        logits = self.write_sources(batch, input_ids, lambda s, out: buffer[s : s + len(out)].copy_(out))
        buffer.mul_(batch.attention_mask[:, :, None].to(buffer.dtype))
        return buffer.permute(1, 2, 0, 3), logits

    def head_outputs(self, layer: int, context: torch.Tensor) -> torch.Tensor:
        """Return each head's write into the residual ``[H, B, T, d]`` from the output projection's input."""
        *lead, _ = context.shape
        z = context.reshape(-1, self.arch.heads, self.arch.d_head).transpose(0, 1)  # [H, B*T, dh]
        return torch.bmm(z, self.out_heads[layer]).view(self.arch.heads, *lead, -1)
