"""EAP and EAP-IG edge scores directly on Hugging Face models.

Per batch: a clean and a corrupted forward without gradients record every
source's output; then the m interpolation steps run stacked along the batch
in one forward and backward. Destination gradients come from the gradients of
the q/k/v projection outputs (per head, through the attention norm's
vector-Jacobian product) and of the MLP and final norm inputs, so no
per-head copy of the residual stream is ever made. Gradients are averaged
over the steps and each layer's scores are one einsum. Source outputs, their
differences and the stored gradients stay in the model's dtype (bf16 or fp16
halve the memory of the largest tensors); each einsum's result and the scores
are accumulated in float32 (or the model's dtype if wider).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import AttributionMethod, Metric, StepConvention, check_choice


@dataclass(frozen=True)
class AttributionConfig:
    """How edge scores are computed (``DiscoverySettings.attribution()`` builds it from a config)."""

    method: AttributionMethod = "eap-ig-inputs"
    steps: int = 5
    step_convention: StepConvention = "k=1..m"
    metric: Metric = "kl"

    def __post_init__(self) -> None:
        check_choice(Metric, self.metric, "metric")
        check_choice(AttributionMethod, self.method, "method")
        check_choice(StepConvention, self.step_convention, "step convention")
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


def attribute_batch(probe: ModelProbe, batch: PairBatch, config: AttributionConfig) -> torch.Tensor:
    """Return the edge scores ``[n_sources, n_destinations]`` summed over the batch's examples."""
    graph, arch = probe.graph, probe.arch
    dtype, act = probe.score_dtype, probe.activation_dtype
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids, act)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids, act)
    delta = corrupted_z - clean_z
    embeds = clean_z[:, :, 0].to(dtype), corrupted_z[:, :, 0].to(dtype)  # copies: the full outputs go
    del clean_z, corrupted_z
    alphas = config.alphas()
    grads = _stacked_gradients(probe, batch, *embeds, clean_logits, alphas, config)

    def summed(spec: str, sources: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return torch.einsum(spec, sources, grad.to(act)).to(dtype)  # in the model's dtype, summed wider

    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=dtype, device=delta.device)
    steps = len(alphas)
    for layer in range(arch.layers):
        before = graph.sources_before(layer)
        scores[:before, graph.attention_destinations(layer)] += _attention_layer_scores(
            probe, layer, grads, delta[:, :, :before], steps
        )
        reads = before if arch.parallel_blocks else before + arch.heads
        mlp = _mean_over_steps(grads["mlp"][layer].to(dtype), steps)
        scores[:reads, graph.mlp_destination(layer)] += summed("btsd,btd->s", delta[:, :, :reads], mlp)
    final = _mean_over_steps(grads["logits"].to(dtype), steps)
    scores[:, graph.logits_destination] += summed("btsd,btd->s", delta, final)
    return (scores * graph.edge_mask_on(scores.device)).detach()


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
        act = probe.activation_dtype
        tensor.register_hook(lambda g: store.__setitem__(key, g.to(act).reshape(*shape, -1)))

    def cloned_input(store, key):
        def hook(module, args):
            copy = args[0].clone()
            keep_grad(copy, store, key)
            return (copy, *args[1:])

        return hook

    forward = [(probe.embed, lambda m, i, o: interpolated)]
    pre = []
    for layer in range(probe.arch.layers):
        pre.append((probe.attention_norms[layer], lambda m, args, layer=layer: found["x"].__setitem__(
            layer, args[0].detach().reshape(*shape, -1))))  # fmt: skip
        for index, projection in enumerate(probe.projections[layer]):
            forward.append((projection.module, lambda m, i, o, layer=layer, index=index: keep_grad(
                o, found["qkv"][layer], index)))  # fmt: skip
        pre.append((probe.mlp_norms[layer], cloned_input(found["mlp"], layer)))
    pre.append((probe.final_norm, cloned_input(found, "logits")))
    with module_hooks(forward, pre), torch.enable_grad():
        logits = probe.run(stacked)
        loss = metric_loss(
            config.metric,
            logits,
            clean_logits.repeat(steps, 1),
            batch.answers.repeat(steps),
            None if batch.corrupted_answers is None else batch.corrupted_answers.repeat(steps),
        ).sum()
        torch.autograd.grad(loss, interpolated)
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
    dtype, act = probe.score_dtype, probe.activation_dtype
    head_grads, weights = [], []
    for projection, grad in zip(probe.projections[layer], grads["qkv"][layer], strict=True):
        head_grads.append(projection.split_output(grad.to(dtype)).flatten(2, 3))  # [mB, T, n_p, dh]
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
    scores = torch.einsum("btsd,btnd->sn", delta * gain.to(act), projected.to(act)).to(dtype)
    # term 3: r_k * mean(w * g_k * u_k) = r_k * (dq_k . W (w * u_k)) / d, times delta . u_k
    unit_heads = torch.einsum("nhd,btd->btnh", weight, unit * gain)
    coefficient = (dq * unit_heads).sum(-1) * scale[..., None] / d_model  # [mB, T, n]
    batch, length = delta.shape[:2]
    delta_unit = torch.einsum("btsd,kbtd->kbts", delta, unit.view(steps, batch, length, d_model).to(act))
    delta_unit = delta_unit.to(dtype)
    scores -= torch.einsum("kbtn,kbts->sn", coefficient.view(steps, batch, length, -1), delta_unit) / steps
    if layernorm:  # term 2: r_k * mean(w * g_k) = r_k * (dq_k . W w) / d, times sum_d delta
        gain_heads = torch.einsum("nhd,d->nh", weight, gain) / d_model
        centring = _mean_over_steps(torch.einsum("btnh,nh->btn", dq, gain_heads) * scale[..., None], steps)
        scores -= torch.einsum("bts,btn->sn", delta.sum(-1, dtype=dtype), centring)
    return scores
