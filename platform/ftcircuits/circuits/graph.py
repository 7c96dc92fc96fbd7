"""The computational graph of a model: sources, destinations and the edges between them.

Sources write into the residual stream: ``input`` (token embeddings), every
attention head ``a{l}.h{h}``, every MLP ``m{l}``. Destinations read it, before
their own norm: the q, k and v inputs of every head (``a{l}.h{h}<q>``; with
grouped-query attention, k and v of every key/value head), every MLP
(``m{l}``) and ``logits``. An edge joins a source to every later destination;
with parallel attention and MLP an MLP does not read its own layer's heads.

The graph is tensor-backed: sources and destinations are index ranges, and a
boolean ``[n_sources, n_destinations]`` mask holds which pairs are edges, so a
score matrix of the same shape is a score per edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from ftcircuits.models.architecture import Architecture


@dataclass(frozen=True)
class Graph:
    """Sources, destinations and the edge mask of one architecture."""

    layers: int
    heads: int
    kv_heads: int
    parallel_blocks: bool

    @classmethod
    def of(cls, architecture: Architecture) -> Graph:
        arch = architecture
        return cls(arch.layers, arch.heads, arch.kv_heads, arch.parallel_blocks)

    # --- sources -------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.layers * (self.heads + 1)

    def head_source(self, layer: int, head: int) -> int:
        """Return the source index of head ``head`` in ``layer``."""
        return 1 + layer * (self.heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.heads + 1) + self.heads

    def sources_before(self, layer: int) -> int:
        """Return how many sources precede ``layer`` (input and all earlier layers)."""
        return 1 + layer * (self.heads + 1)

    @cached_property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.layers):
            names += [f"a{layer}.h{h}" for h in range(self.heads)] + [f"m{layer}"]
        return names

    # --- destinations --------------------------------------------------------------------
    @property
    def destinations_per_layer(self) -> int:
        """q for every head, k and v for every key/value head, and the MLP."""
        return self.heads + 2 * self.kv_heads + 1

    @property
    def n_destinations(self) -> int:
        return self.layers * self.destinations_per_layer + 1

    def attention_destinations(self, layer: int) -> slice:
        """Return the destination range of a layer's q (heads), k and v (kv heads), in that order."""
        start = layer * self.destinations_per_layer
        return slice(start, start + self.heads + 2 * self.kv_heads)

    def mlp_destination(self, layer: int) -> int:
        return (layer + 1) * self.destinations_per_layer - 1

    @property
    def logits_destination(self) -> int:
        return self.n_destinations - 1

    @cached_property
    def destination_names(self) -> list[str]:
        names = []
        for layer in range(self.layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.heads)]
            for part in "kv":
                names += [f"a{layer}.h{h}<{part}>" for h in range(self.kv_heads)]
            names.append(f"m{layer}")
        return [*names, "logits"]

    def destination_node(self, destination: int) -> str:
        """Return the node a destination belongs to (q/k/v collapse into their head)."""
        return self.destination_names[destination].split("<")[0]

    # --- edges ---------------------------------------------------------------------------
    def edge_mask_on(self, device: torch.device | str) -> torch.Tensor:
        """Return the boolean ``[n_sources, n_destinations]`` mask of real edges, built on ``device``.

        Combine it with scores, circuits or activations as ``graph.edge_mask_on(x.device)``. The mask
        is built there, never copied from another device, and cached per device: do not modify it.
        """
        return _edge_mask(self, str(torch.device(device)))

    @property
    def edge_mask(self) -> torch.Tensor:
        """Return the edge mask on the CPU, for code that wants host data (names, files)."""
        return self.edge_mask_on("cpu")

    @property
    def n_edges(self) -> int:
        """Return the number of edges (arithmetic: no mask is built)."""
        edges = self.n_sources  # every source reaches the logits
        for layer in range(self.layers):
            before = self.sources_before(layer)
            edges += before * (self.heads + 2 * self.kv_heads)  # the q, k and v inputs
            edges += before if self.parallel_blocks else before + self.heads  # the MLP
        return edges

    def edge_names(self) -> list[tuple[str, str]]:
        """Return (source, destination) names of every edge, in mask order (row-major)."""
        src, dst = self.edge_mask_on("cpu").nonzero(as_tuple=True)
        pairs = zip(src.tolist(), dst.tolist(), strict=True)
        return [(self.source_names[s], self.destination_names[d]) for s, d in pairs]


@lru_cache(maxsize=64)
def _edge_mask(graph: Graph, device: str) -> torch.Tensor:
    """Build ``graph``'s edge mask on ``device`` (cached by graph and device name)."""
    mask = torch.zeros(graph.n_sources, graph.n_destinations, dtype=torch.bool, device=device)
    for layer in range(graph.layers):
        before = graph.sources_before(layer)
        mask[:before, graph.attention_destinations(layer)] = True
        mlp_reads = before if graph.parallel_blocks else before + graph.heads
        mask[:mlp_reads, graph.mlp_destination(layer)] = True
    mask[:, graph.logits_destination] = True
    return mask
