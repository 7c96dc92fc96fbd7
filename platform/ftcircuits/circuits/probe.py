"""A model's modules as the circuit graph sees them, shared by attribution and evaluation."""

from __future__ import annotations

import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.encoding import PromptBatch, last_token_logits
from ftcircuits.models.architecture import Architecture
from ftcircuits.models.heads import out_projection_heads, qkv_projections
from ftcircuits.models.hooks import module_hooks


class ModelProbe:
    """Module lookups of one model (embedding, norms, projections, outputs) and its source outputs."""

    def __init__(self, model: torch.nn.Module, arch: Architecture) -> None:
        self.model, self.arch, self.graph = model, arch, Graph.of(arch)
        modules = dict(model.named_modules())
        names = arch.names
        layers = range(arch.layers)
        self.embed = modules[names.embed]
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

    @torch.no_grad()
    def source_outputs(
        self, batch: PromptBatch, input_ids: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return every source's output ``[B, T, n_sources, d]`` and the last-position logits.

        The outputs are in ``dtype`` (default: the score dtype, float32 or wider); attribution asks
        for the model's own dtype, so a bf16 model's activations take half the memory.
        """
        dtype = dtype or self.score_dtype
        outputs: list[torch.Tensor] = []
        forward = [(self.embed, lambda m, i, o: outputs.append(o))]
        pre = []
        for layer in range(self.arch.layers):
            heads = lambda m, args, layer=layer: outputs.append(self.head_outputs(layer, args[0]))  # noqa: E731
            pre.append((self.attention_outs[layer], heads))
            forward.append((self.mlp_outs[layer], lambda m, i, o: outputs.append(o)))
        with module_hooks(forward, pre):  # sources register in forward order: input, then per layer
            logits = self.run(batch, input_ids)
        batch_size, length = batch.input_ids.shape
        # OPT runs its MLP on flattened [B*T, d] states: bring every output back to [B, T, -1, d]
        parts = [t.to(dtype).reshape(batch_size, length, -1, t.shape[-1]) for t in outputs]
        stacked = torch.cat(parts, dim=2)
        return stacked * batch.attention_mask[:, :, None, None].to(dtype), logits

    def head_outputs(self, layer: int, context: torch.Tensor) -> torch.Tensor:
        """Return each head's write into the residual ``[B, T, H, d]`` from the output projection's input."""
        z = context.view(*context.shape[:-1], self.arch.heads, self.arch.d_head)
        return torch.einsum("bthk,hkd->bthd", z, self.out_heads[layer])
