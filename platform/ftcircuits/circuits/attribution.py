"""EAP and EAP-IG edge scores directly on Hugging Face models, at the floor's memory plus one buffer.

Per batch: a corrupted and a clean forward without gradients write every source's output into one
source-major buffer ``[n_sources, B, T, d]`` in the model's dtype, which ends up holding
``z(corrupted) - z(clean)``: the one tensor that must live through the backward pass. Then the m
interpolation steps run stacked along the batch in one forward and backward, and every destination's
scores are accumulated *inside* the backward pass, from gradient hooks, as soon as its gradient
exists; nothing is kept per layer.

A destination's residual gradient, averaged over the steps, is ``G_v [B*T*d]``; its scores are
``buffer[:reads] @ G_v`` (the sources it reads are a prefix of the buffer). A layer's q/k/v
destinations are scored together with the MLP of the layer below in one product (the MLP's
gradient is the next to arrive), so the buffer's prefix is read once per layer (more often only when
a layer's gradients outgrow their memory share: in a model of few layers, or gpt2); rows of sources
a destination does not read land on non-edges and are zeroed by the edge mask at the end.

Per-head q/k/v gradients come from the projection outputs' gradients through the attention norm's
vector-Jacobian product, computed in head space, so no per-head copy of the residual stream is
made. Head-space temporaries are computed in float32 (or the model's dtype if wider) a few heads
at a time; products against the buffer run in the model's dtype and are summed into float32 scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ftcircuits.circuits.interventions import check_intervention, write_replacements
from ftcircuits.circuits.memory import floor_bytes
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.models.heads import QKVProjection
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import AttributionMethod, Intervention, Metric, StepConvention, check_choice

# the gradients waiting for a product, and again one chunk of heads' temporaries, stay under this
# share of (the floor's activations + the difference buffer): together well inside MEMORY_SLACK
TEMPORARY_SHARE = 0.03
PATCHING_ONLY = ("clean-corrupted", "eap-ig-inputs")  # methods that take the corrupted input itself


@dataclass(frozen=True)
class AttributionConfig:
    """How edge scores are computed (``DiscoverySettings.attribution()`` builds it from a config).

    ``intervention`` is what replaces a source's output in the scored difference ``z(replaced) - z(clean)``
    (and, in discovery, in the circuit's evaluation). Input-embedding methods (``clean-corrupted``,
    ``eap-ig-inputs``) interpolate towards the corrupted prompt and so take ``patching`` only, as in
    the reference.
    """

    method: AttributionMethod = "eap-ig-inputs"
    steps: int = 5
    step_convention: StepConvention = "k=1..m"
    metric: Metric = "kl"
    intervention: Intervention = "patching"

    def __post_init__(self) -> None:
        check_choice(Metric, self.metric, "metric")
        check_choice(AttributionMethod, self.method, "method")
        check_choice(StepConvention, self.step_convention, "step convention")
        check_choice(Intervention, self.intervention, "intervention")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.method in PATCHING_ONLY and self.intervention != "patching":
            raise ValueError(
                f"method {self.method!r} interpolates the input embeddings towards the corrupted prompt: "
                f"intervention must be 'patching', got {self.intervention!r}"
            )

    def alphas(self) -> list[float]:
        """Return the interpolation weights of the clean value (1 = clean, 0 = replaced); none for exact."""
        if self.method == "exact":
            return []
        if self.method == "eap":
            return [1.0]
        if self.method == "clean-corrupted":
            return [1.0, 0.0]
        first = 1 if self.step_convention == "k=1..m" else 0
        return [(first + k) / self.steps for k in range(self.steps)]

    @property
    def stacked(self) -> int:
        """Return how many copies of a batch one pass stacks, what the batch's memory is planned for:
        the steps; for exact, ``steps`` copies' worth (its copies of the batch, each patching one edge,
        take that memory and more copies run in chunks)."""
        return len(self.alphas()) or self.steps


@dataclass
class SourceDifference:
    """``z(corrupted) - z(clean)`` of every source, source-major, zero at padding; what the steps need."""

    delta: torch.Tensor  # [n_sources, B, T, d], the model's dtype
    clean_embed: torch.Tensor  # [B, T, d], the score dtype
    corrupted_embed: torch.Tensor
    clean_logits: torch.Tensor  # [B, vocab]


def source_difference(
    probe: ModelProbe,
    batch: PairBatch,
    intervention: Intervention = "patching",
    means: torch.Tensor | None = None,
) -> SourceDifference:
    """Return the sources' replaced-minus-clean outputs, written into one buffer by (at most) two forwards.

    The replaced output is the corrupted prompt's (``patching``), zero, or the source's mean ``means``.
    """
    delta = probe.source_buffer(batch.clean, probe.activation_dtype)
    write_replacements(probe, batch, delta, intervention, means)
    corrupted_embed = delta[0].clone()
    embeds: dict[str, torch.Tensor] = {}

    def subtract(first: int, outputs: torch.Tensor) -> None:
        if first == 0:
            embeds["clean"] = outputs[0].clone()
        delta[first : first + len(outputs)].sub_(outputs)

    clean_logits = probe.write_sources(batch.clean, batch.clean.input_ids, subtract)
    mask = batch.clean.attention_mask[:, :, None]
    delta.mul_(mask.to(delta.dtype))
    wide = mask.to(probe.score_dtype)  # the interpolation runs in float32 (or wider)
    return SourceDifference(delta, embeds["clean"] * wide, corrupted_embed * wide, clean_logits)


def attribute_batch(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the edge scores ``[n_sources, n_destinations]`` summed over the batch's examples.

    ``means``: every source's mean output ``[n_sources, d]`` (``interventions.source_means``), for the
    ``mean`` intervention.
    """
    check_intervention(config.intervention, means)
    if config.method == "exact":
        from ftcircuits.circuits.exact import exact_scores  # exact builds on this module's config

        return exact_scores(probe, batch, config, means)
    difference = source_difference(probe, batch, config.intervention, means)
    graph = probe.graph
    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=probe.score_dtype,
                         device=difference.delta.device)  # fmt: skip
    if config.method == "eap-ig-activations":
        for group in source_groups(probe):
            _score_in_backward(probe, batch, difference, config, scores, group)
    else:
        _score_in_backward(probe, batch, difference, config, scores)
    return scores.mul_(graph.edge_mask_on(scores.device))


@dataclass(frozen=True)
class SourceGroup:
    """Sources written by one module's output, interpolated together by ``eap-ig-activations``: the input
    embedding, a layer's heads (the attention output projection), or a layer's MLP."""

    module: torch.nn.Module
    rows: slice  # their rows of the source-major buffer


def source_groups(probe: ModelProbe) -> list[SourceGroup]:
    """Return the input, then every layer's heads and MLP, in forward order."""
    graph = probe.graph
    groups = [SourceGroup(probe.embed, slice(0, 1))]
    for layer in range(probe.arch.layers):
        first = graph.head_source(layer, 0)
        groups.append(SourceGroup(probe.attention_outs[layer], slice(first, first + probe.arch.heads)))
        mlp = graph.mlp_source(layer)
        groups.append(SourceGroup(probe.mlp_outs[layer], slice(mlp, mlp + 1)))
    return groups


def _score_in_backward(
    probe: ModelProbe, batch: PairBatch, difference: SourceDifference, config: AttributionConfig,
    scores: torch.Tensor, group: SourceGroup | None = None,
) -> None:  # fmt: skip
    """Run the interpolation steps stacked along the batch; score every destination in the backward.

    Without ``group``: the input embeddings are interpolated (every method but eap-ig-activations) and
    every edge is scored. With ``group``: that group's output is set to ``clean + (1 - alpha) * delta``
    (its clean output in this pass plus a share of the buffer's difference) and only its edges are
    scored; the replaced output is a new leaf, so the backward pass stops there.
    """
    alphas = config.alphas()
    steps = len(alphas)
    clean, corrupted = difference.clean_embed, difference.corrupted_embed
    weights = torch.tensor(alphas, dtype=probe.score_dtype, device=clean.device).view(-1, 1, 1, 1)
    model_dtype = next(probe.model.parameters()).dtype
    leaves: list[torch.Tensor] = []
    if group is None:
        interpolated = corrupted + weights * (clean - corrupted)
        leaves.append(interpolated.flatten(0, 1).to(model_dtype).requires_grad_(True))
        replace = (probe.embed, lambda m, i, o: leaves[0])
    else:
        share = difference.delta[group.rows].sum(dim=0).to(probe.score_dtype)  # [B, T, d]
        shift = ((1 - weights) * share).flatten(0, 1)  # [m*B, T, d]: (1 - alpha_k) delta, step-major

        def interpolated_output(module, inputs, output):
            leaf = (output.detach() + shift.view(output.shape).to(output.dtype)).requires_grad_(True)
            leaves.append(leaf)
            return leaf

        replace = (group.module, interpolated_output)
    stacked = batch.clean.repeat(steps)
    rows = slice(0, probe.graph.n_sources) if group is None else group.rows
    scorer = _BackwardScorer(probe, difference.delta, scores, steps, rows)

    def cloned_input(on_grad):
        def hook(module, args):
            copy = args[0].clone()
            copy.register_hook(on_grad)
            return (copy, *args[1:])

        return hook

    def keep_input(layer: int):
        return lambda m, args: scorer.norm_inputs.__setitem__(layer, args[0].detach())

    def on_projection(layer: int, index: int):
        def hook(module, inputs, output) -> None:  # returns nothing: the output is not replaced
            output.register_hook(lambda g: scorer.projection_gradient(layer, index, g))

        return hook

    forward = [replace]
    pre = []
    for layer in range(probe.arch.layers):
        pre.append((probe.attention_norms[layer], keep_input(layer)))
        for index, projection in enumerate(probe.projections[layer]):
            forward.append((projection.module, on_projection(layer, index)))
        pre.append(
            (probe.mlp_norms[layer], cloned_input(lambda g, layer=layer: scorer.mlp_gradient(layer, g)))
        )
    pre.append((probe.final_norm, cloned_input(scorer.logits_gradient)))
    with module_hooks(forward, pre), torch.enable_grad():
        logits = probe.run(stacked)
        loss = metric_loss(
            config.metric,
            logits,
            difference.clean_logits.repeat(steps, 1),
            batch.answers.repeat(steps),
            None if batch.corrupted_answers is None else batch.corrupted_answers.repeat(steps),
        ).sum()
        torch.autograd.grad(loss, leaves[0])
    scorer.check_done()


@dataclass
class _Group:
    """Destination gradients waiting for one product with the buffer's first ``rows`` sources."""

    rows: int
    columns: list[int]  # destination index of each filled gradient row
    gradients: torch.Tensor  # [capacity, B*T*d] in the model's dtype


class _BackwardScorer:
    """Turns the gradients the backward pass produces into scores, a group of destinations at a time.

    Destinations reading the same prefix of the buffer share one product: a layer's q/k/v and the
    MLP of the layer below (``logits`` and the last MLP), which the backward pass produces one after
    the other. A group is flushed when a destination with another prefix arrives, at the end, or
    when it holds as many gradients as its memory share allows; scores never depend on the grouping.
    """

    def __init__(
        self, probe: ModelProbe, delta: torch.Tensor, scores: torch.Tensor, steps: int, sources: slice
    ) -> None:
        self.probe, self.delta, self.scores, self.steps = probe, delta, scores, steps
        self.sources = sources  # the rows scored: all, or one group's (eap-ig-activations)
        self.graph = probe.graph
        self.batch, self.length, self.width = delta.shape[1], delta.shape[2], delta.shape[3]
        self.norm_inputs: dict[int, torch.Tensor] = {}
        self.arrived = [0] * probe.arch.layers
        self.group: _Group | None = None
        self.waiting: torch.Tensor | None = None
        floor = floor_bytes(probe.arch, steps * self.batch, self.length, delta.dtype)
        budget = TEMPORARY_SHARE * (floor + delta.nbytes)  # for the group, and again for head chunks
        self.capacity = max(1, int(budget // (self.batch * self.length * self.width * delta.itemsize)))
        self.chunk_bytes = budget

    # --- gradient hooks ------------------------------------------------------------------
    def logits_gradient(self, grad: torch.Tensor) -> None:
        self._add(self.graph.n_sources, self.graph.logits_destination, self._mean_over_steps(grad))

    def mlp_gradient(self, layer: int, grad: torch.Tensor) -> None:
        rows = self.graph.sources_before(layer + 1)  # what the layer above reads; rows past the MLP's
        self._add(rows, self.graph.mlp_destination(layer), self._mean_over_steps(grad))  # are non-edges

    def projection_gradient(self, layer: int, index: int, grad: torch.Tensor) -> None:
        projections = self.probe.projections[layer]
        first = self.graph.attention_destinations(layer).start
        first += sum(len(p.parts) * p.heads[0] for p in projections[:index])
        rows = self.graph.sources_before(layer)
        for offset, gradient in self._head_gradients(layer, projections[index], grad):
            self._add(rows, first + offset, gradient)
        self.arrived[layer] += 1
        if self.arrived[layer] == len(projections):
            del self.norm_inputs[layer]

    def check_done(self) -> None:
        """Score what is still waiting (the first layer's q/k/v) and free the waiting rows."""
        self._flush()
        self.waiting = None

    # --- products with the buffer -----------------------------------------------------------
    def _add(self, rows: int, destination: int, gradient: torch.Tensor) -> None:
        """Queue the gradient rows ``[k, B*T*d]`` of destinations ``destination .. + k`` for a product
        with the buffer's first ``rows`` sources (cast to the model's dtype on the way)."""
        if rows <= self.sources.start:  # the destination reads none of the scored sources
            return
        gradient = gradient.reshape(-1, self.delta[0].numel())
        done = 0
        while done < len(gradient):
            group = self.group
            if group is None or group.rows != rows or len(group.columns) == self.capacity:
                self._flush()
                if self.waiting is None:  # allocated once, reused by every group
                    self.waiting = self.delta.new_empty(self.capacity, self.delta[0].numel())
                group = self.group = _Group(rows, [], self.waiting)
            filled = len(group.columns)
            take = min(self.capacity - filled, len(gradient) - done)
            group.gradients[filled : filled + take].copy_(gradient[done : done + take])
            group.columns.extend(range(destination + done, destination + done + take))
            done += take

    def _flush(self) -> None:
        group, self.group = self.group, None
        if group is None or not group.columns:
            return
        scored = slice(self.sources.start, min(group.rows, self.sources.stop))
        rows = self.delta[scored].view(scored.stop - scored.start, -1)
        product = rows @ group.gradients[: len(group.columns)].T  # [rows, filled], the model's dtype
        columns = torch.tensor(group.columns, device=self.scores.device)
        self.scores[scored].index_add_(1, columns, product.to(self.scores.dtype))

    def _mean_over_steps(self, grad: torch.Tensor) -> torch.Tensor:
        """Return a destination's gradient averaged over the steps, flat ``[B*T*d]``, in the score dtype."""
        return grad.reshape(self.steps, -1).to(self.scores.dtype).mean(dim=0)

    def _head_gradients(
        self, layer: int, projection: QKVProjection, grad: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first head, residual gradients [heads, B*T*d])`` of a projection's heads, a chunk of
        heads at a time: each head's gradient through the attention norm, averaged over the steps.

        For a LayerNorm with gain w, inverse std r and unit input u, the residual gradient of a
        head's output gradient ``g = W_head^T dq`` is ``r (w*g - mean(w*g) - u mean(w*g*u))``
        (RMSNorm: no centring term). Averaged over the steps it is
        ``w * (mean_k r_k dq_k) W  -  mean_k c_k u_k  -  mean_k r_k (dq_k . W w) / d`` with
        ``c_k = r_k (dq_k . W (w*u_k)) / d``: all computed in head space, never per step in full width.
        """
        dtype, steps, width = self.scores.dtype, self.steps, self.width
        positions = self.batch * self.length
        norm = self.probe.attention_norms[layer]
        x = self.norm_inputs[layer].reshape(steps, positions, width).to(dtype)
        layernorm = self.probe.arch.names.norm == "layernorm"
        if layernorm:
            x = x - x.mean(dim=-1, keepdim=True)
        eps = norm.eps if layernorm else (getattr(norm, "variance_epsilon", None) or norm.eps)
        inverse = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # [m, P, 1]
        unit = x * inverse  # [m, P, d]
        del x
        gain = norm.weight.to(dtype)
        heads = projection.split_output(grad.reshape(steps, positions, -1)).flatten(2, 3)  # [m, P, n, dh]
        weight = projection.weight().flatten(0, 1)  # [n, dh, d]
        count = weight.shape[0]
        per_head = 3 * positions * width * torch.finfo(dtype).bits // 8  # result, spread, the cast
        chunk = max(1, min(count, int(self.chunk_bytes // per_head)))
        for start in range(0, count, chunk):
            rows = slice(start, min(start + chunk, count))
            w = weight[rows].to(dtype)  # [c, dh, d]
            dq = heads[:, :, rows].to(dtype) * inverse[..., None]  # r_k dq_k: [m, P, c, dh]
            averaged = dq.mean(dim=0).transpose(0, 1)  # [c, P, dh]
            result = torch.bmm(averaged, w).mul_(gain)  # w * (mean_k r_k dq_k) W: [c, P, d]
            unit_heads = torch.einsum("kpd,chd->kpch", unit * gain, w)  # W (w*u_k)
            coefficient = (dq * unit_heads).sum(-1) / width  # c_k: [m, P, c]
            del unit_heads
            spread = torch.bmm(coefficient.permute(1, 2, 0), unit.transpose(0, 1))  # [P, c, d]
            result.sub_(spread.transpose(0, 1), alpha=1 / steps)
            del spread
            if layernorm:
                centring = torch.einsum("kpch,ch->pc", dq, w @ gain) / (steps * width)  # [P, c]
                result.sub_(centring.T[..., None])
            yield rows.start, result
