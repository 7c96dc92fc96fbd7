"""EAP and EAP-IG edge scores directly on Hugging Face models.

Per batch: a clean and a corrupted forward without gradients record every
source's output; then the m interpolation steps run stacked along the batch
in one forward and backward. Destination gradients come from the gradients of
the q/k/v projection outputs (per head, through the attention norm's
vector-Jacobian product) and of the MLP and final norm inputs, so no
per-head copy of the residual stream is ever made. Gradients are averaged
over the steps and each layer's scores are one einsum, in float32 (or the
model's dtype if wider).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.metrics import METRICS, metric_loss
from ftcircuits.finetune.encoding import PromptBatch, last_token_logits
from ftcircuits.models.architecture import Architecture
from ftcircuits.models.heads import out_projection_heads, qkv_projections

Method = Literal["eap", "clean-corrupted", "eap-ig-inputs"]
# "k=1..m": alpha = k/m for k = 1..m (the paper-era reference: includes the clean input);
# "k=0..m-1": alpha = k/m for k = 0..m-1 (later reference versions: includes the corrupted input).
StepConvention = Literal["k=1..m", "k=0..m-1"]


@dataclass(frozen=True)
class AttributionConfig:
    """How edge scores are computed."""

    method: Method = "eap-ig-inputs"
    steps: int = 5
    step_convention: StepConvention = "k=1..m"
    metric: str = "kl"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; allowed: {', '.join(METRICS)}")
        if self.method not in ("eap", "clean-corrupted", "eap-ig-inputs"):
            raise ValueError(f"unknown method {self.method!r}; allowed: eap, clean-corrupted, eap-ig-inputs")
        if self.step_convention not in ("k=1..m", "k=0..m-1"):
            raise ValueError(f"unknown step convention {self.step_convention!r}; allowed: k=1..m, k=0..m-1")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def alphas(self) -> list[float]:
        """Return the interpolation weights of the clean input (1 = clean, 0 = corrupted)."""
        if self.method == "eap":
            return [1.0]
        if self.method == "clean-corrupted":
            return [1.0, 0.0]
        first = 1 if self.step_convention == "k=1..m" else 0
        return [(first + k) / self.steps for k in range(self.steps)]


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


class ModelProbe:
    """Module lookups and hook plumbing of one model, shared by attribution and evaluation."""

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
        self.score_dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)

    def run(self, batch: PromptBatch, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return last-position logits of ``batch`` (optionally with other token ids)."""
        return last_token_logits(self.model, batch, input_ids)

    @torch.no_grad()
    def source_outputs(
        self, batch: PromptBatch, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return every source's output ``[B, T, n_sources, d]`` (float) and the last-position logits."""
        outputs: list[torch.Tensor] = []
        hooks = [self.embed.register_forward_hook(lambda m, i, o: outputs.append(o))]
        for layer in range(self.arch.layers):
            hooks.append(
                self.attention_outs[layer].register_forward_pre_hook(
                    lambda m, args, layer=layer: outputs.append(self.head_outputs(layer, args[0]))
                )
            )
            hooks.append(self.mlp_outs[layer].register_forward_hook(lambda m, i, o: outputs.append(o)))
        try:
            logits = self.run(batch, input_ids)
        finally:
            for hook in hooks:
                hook.remove()
        batch_size, length = batch.input_ids.shape
        # OPT runs its MLP on flattened [B*T, d] states: bring every output back to [B, T, -1, d]
        parts = [t.to(self.score_dtype).reshape(batch_size, length, -1, t.shape[-1]) for t in outputs]
        stacked = torch.cat(parts, dim=2)
        return stacked * batch.attention_mask[:, :, None, None].to(self.score_dtype), logits

    def head_outputs(self, layer: int, context: torch.Tensor) -> torch.Tensor:
        """Return each head's write into the residual ``[B, T, H, d]`` from the output projection's input."""
        z = context.view(*context.shape[:-1], self.arch.heads, self.arch.d_head)
        return torch.einsum("bthk,hkd->bthd", z, self.out_heads[layer])


def attribute_batch(probe: ModelProbe, batch: PairBatch, config: AttributionConfig) -> torch.Tensor:
    """Return the edge scores ``[n_sources, n_destinations]`` summed over the batch's examples."""
    graph, arch = probe.graph, probe.arch
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    delta = corrupted_z - clean_z
    alphas = config.alphas()
    grads = _stacked_gradients(
        probe, batch, clean_z[:, :, 0], corrupted_z[:, :, 0], clean_logits, alphas, config
    )

    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=probe.score_dtype, device=delta.device)
    steps = len(alphas)
    for layer in range(arch.layers):
        before = graph.sources_before(layer)
        scores[:before, graph.attention_destinations(layer)] += _attention_layer_scores(
            probe, layer, grads, delta[:, :, :before], steps
        )
        reads = before if arch.parallel_blocks else before + arch.heads
        mlp = _mean_over_steps(grads["mlp"][layer], steps)
        scores[:reads, graph.mlp_destination(layer)] += torch.einsum("btsd,btd->s", delta[:, :, :reads], mlp)
    final = _mean_over_steps(grads["logits"], steps)
    scores[:, graph.logits_destination] += torch.einsum("btsd,btd->s", delta, final)
    return (scores * graph.edge_mask.to(scores.device)).detach()


def _mean_over_steps(grad: torch.Tensor, steps: int) -> torch.Tensor:
    return grad.view(steps, -1, *grad.shape[1:]).mean(dim=0)


def _stacked_gradients(
    probe: ModelProbe,
    batch: PairBatch,
    clean_embed: torch.Tensor,
    corrupted_embed: torch.Tensor,
    clean_logits: torch.Tensor,
    alphas: list[float],
    config: AttributionConfig,
) -> dict:
    """Run the interpolation steps stacked along the batch; return the gradients the scores need.

    Returns ``qkv[layer][projection]``: gradients of the projection outputs;
    ``x[layer]``: the attention norm's input; ``mlp[layer]`` and ``logits``:
    gradients of the MLP norm's and final norm's inputs (all ``[steps*B, ...]``).
    """
    steps = len(alphas)
    weights = torch.tensor(alphas, dtype=clean_embed.dtype, device=clean_embed.device)
    dtype = next(probe.model.parameters()).dtype
    interpolated = corrupted_embed + weights.view(-1, 1, 1, 1) * (clean_embed - corrupted_embed)
    interpolated = interpolated.flatten(0, 1).to(dtype).requires_grad_(True)
    stacked = batch.clean.repeat(steps)

    found: dict = {"qkv": [[None] * len(p) for p in probe.projections], "x": [None] * probe.arch.layers,
                   "mlp": [None] * probe.arch.layers, "logits": None}  # fmt: skip

    shape = stacked.input_ids.shape

    def keep_grad(tensor: torch.Tensor, store: list | dict, key) -> None:
        tensor.register_hook(lambda g: store.__setitem__(key, g.to(probe.score_dtype).reshape(*shape, -1)))

    def cloned_input(store, key):
        def hook(module, args):
            copy = args[0].clone()
            keep_grad(copy, store, key)
            return (copy, *args[1:])

        return hook

    hooks = [probe.embed.register_forward_hook(lambda m, i, o: interpolated)]
    for layer in range(probe.arch.layers):
        hooks.append(
            probe.attention_norms[layer].register_forward_pre_hook(
                lambda m, args, layer=layer: found["x"].__setitem__(
                    layer, args[0].detach().reshape(*shape, -1)
                )
            )
        )
        for index, projection in enumerate(probe.projections[layer]):
            hooks.append(
                projection.module.register_forward_hook(
                    lambda m, i, o, layer=layer, index=index: keep_grad(o, found["qkv"][layer], index)
                )
            )
        hooks.append(probe.mlp_norms[layer].register_forward_pre_hook(cloned_input(found["mlp"], layer)))
    hooks.append(probe.final_norm.register_forward_pre_hook(cloned_input(found, "logits")))
    try:
        with torch.enable_grad():
            logits = probe.run(stacked)
            loss = metric_loss(
                config.metric,
                logits,
                clean_logits.repeat(steps, 1),
                batch.answers.repeat(steps),
                None if batch.corrupted_answers is None else batch.corrupted_answers.repeat(steps),
            ).sum()
            torch.autograd.grad(loss, interpolated)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _attention_layer_scores(
    probe: ModelProbe, layer: int, grads: dict, delta: torch.Tensor, steps: int
) -> torch.Tensor:
    """Return the scores ``[sources before layer, q/k/v destinations]`` of one layer's heads.

    A head's residual gradient is the norm's vector-Jacobian product of
    ``g = W_head^T dq`` (dq: the projection output's gradient). For a
    LayerNorm with gain w, inverse std r and unit input u,
    ``dx = r (w*g - mean(w*g) - u mean(w*g*u))`` (RMSNorm: no centring term),
    so ``delta . dx`` splits into three sums that never materialise a
    per-step ``[n, d]`` gradient per position: the steps are averaged in head
    space first and projected once.
    """
    norm = probe.attention_norms[layer]
    dtype = probe.score_dtype
    head_grads, weights = [], []
    for projection, grad in zip(probe.projections[layer], grads["qkv"][layer], strict=True):
        head_grads.append(projection.split_output(grad).flatten(2, 3))  # [mB, T, n_p, dh]
        weights.append(projection.weight().to(dtype).flatten(0, 1))  # [n_p, dh, d]
    dq, weight = torch.cat(head_grads, dim=2), torch.cat(weights, dim=0)
    x = grads["x"][layer].to(dtype)
    d_model = x.shape[-1]
    gain = norm.weight.to(dtype)
    layernorm = probe.arch.names.norm == "layernorm"
    if layernorm:
        x = x - x.mean(dim=-1, keepdim=True)
        inverse = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + norm.eps)
    else:
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        inverse = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    unit = x * inverse  # [mB, T, d]
    scale = inverse.squeeze(-1)  # [mB, T]

    # term 1: sum_bt (delta * w) . mean_k r_k g_k, with mean_k r_k g_k = (mean_k r_k dq_k) @ W
    averaged = _mean_over_steps(dq * scale[..., None, None], steps)
    projected = torch.einsum("btnh,nhd->btnd", averaged, weight)
    scores = torch.einsum("btsd,btnd->sn", delta * gain, projected)
    # term 3: r_k * mean(w * g_k * u_k) = r_k * (dq_k . W (w * u_k)) / d, times delta . u_k
    unit_heads = torch.einsum("nhd,btd->btnh", weight, unit * gain)
    coefficient = (dq * unit_heads).sum(-1) * scale[..., None] / d_model  # [mB, T, n]
    batch, length = delta.shape[:2]
    delta_unit = torch.einsum("btsd,kbtd->kbts", delta, unit.view(steps, batch, length, d_model))
    scores -= torch.einsum("kbtn,kbts->sn", coefficient.view(steps, batch, length, -1), delta_unit) / steps
    if layernorm:  # term 2: r_k * mean(w * g_k) = r_k * (dq_k . W w) / d, times sum_d delta
        gain_heads = torch.einsum("nhd,d->nh", weight, gain) / d_model
        centring = _mean_over_steps(torch.einsum("btnh,nh->btn", dq, gain_heads) * scale[..., None], steps)
        scores -= torch.einsum("bts,btn->sn", delta.sum(-1), centring)
    return scores
