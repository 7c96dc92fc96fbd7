"""Comparing circuits: node/edge overlap, score correlation, edge changes and per-layer change scores.

Circuits are edges tables (see ``circuits/io.py``): one row per graph edge with
``source``, ``destination``, ``score`` and ``in_circuit``. The change analysis
follows the paper's Algorithm 1: every edge in either circuit gets a delta,
deltas are summed per layer, and the layers with the largest sums are critical.
"""

from __future__ import annotations

import re

import polars as pl

from ftcircuits.options import CriticalRule, LayerVariant, check_choice

KEY = ["source", "destination"]
_NODE = re.compile(r"^(?:a(\d+)\.h\d+(?:<[qkv]>)?|m(\d+))$")


# --- names ---------------------------------------------------------------------------------
def node_layer(name: str, input_layer: int = 0) -> int | None:
    """Return the layer of a source/destination/node name; ``input`` -> input_layer, ``logits`` -> None."""
    if name == "input":
        return input_layer
    if name == "logits":
        return None
    match = _NODE.match(name)
    if match is None:
        raise ValueError(f"not a node name: {name!r}")
    return int(match.group(1) or match.group(2))


def destination_node() -> pl.Expr:
    """Return the destination column with q/k/v collapsed into the head (``a4.h1<q>`` -> ``a4.h1``)."""
    return pl.col("destination").str.replace(r"<[qkv]>$", "")


def _layer_of(column: str) -> pl.Expr:
    """Return the layer number in a name column (``a3.h5``, ``m2``); null for ``input`` and ``logits``."""
    return pl.col(column).str.extract(r"^[am](\d+)", 1).cast(pl.Int64)


# --- sets ----------------------------------------------------------------------------------
def circuit_nodes(edges: pl.DataFrame) -> set[str]:
    """Return the nodes touched by in-circuit edges (sources and destination nodes, input/logits too)."""
    kept = edges.filter(pl.col("in_circuit"))
    return set(kept["source"].to_list()) | set(kept.select(destination_node())["destination"].to_list())


def circuit_edges(edges: pl.DataFrame) -> set[tuple[str, str]]:
    """Return the (source, destination) pairs of the in-circuit edges."""
    kept = edges.filter(pl.col("in_circuit"))
    return set(zip(kept["source"].to_list(), kept["destination"].to_list(), strict=True))


def jaccard(a: set, b: set) -> float:
    """Return |a & b| / |a | b|; two empty sets give 1.0."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


# --- aligned tables ------------------------------------------------------------------------
def check_same_edges(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Raise ValueError unless the two tables hold the same (source, destination) rows, each once."""
    for name, table in (("first", a), ("second", b)):
        if table.select(KEY).is_duplicated().any():
            raise ValueError(f"the {name} circuit table has duplicate (source, destination) rows")
    if a.height != b.height:
        raise ValueError(f"circuit tables cover different edges: {a.height} rows vs {b.height} rows")
    missing = a.select(KEY).join(b.select(KEY), on=KEY, how="anti")
    if missing.height:
        first = missing.row(0)
        raise ValueError(f"circuit tables cover different edges: {missing.height} differ, e.g. {first}")


def _aligned(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """Return both tables joined on the edge: score_before, in_before, score_after, in_after."""
    check_same_edges(before, after)
    cols = [*KEY, "score", "in_circuit"]
    left = before.select(cols).rename({"score": "score_before", "in_circuit": "in_before"})
    right = after.select(cols).rename({"score": "score_after", "in_circuit": "in_after"})
    return left.join(right, on=KEY, how="inner")


def score_spearman(before: pl.DataFrame, after: pl.DataFrame, absolute: bool = False) -> float:
    """Return the Spearman rank correlation (average ranks) of the two tables' scores over all edges.

    ``absolute`` ranks |score|, the order circuit selection uses; signed scores of
    the many near-zero edges are mostly noise, so their ranks correlate less.
    """
    table = _aligned(before, after)
    columns = [pl.col(c).cast(pl.Float64) for c in ("score_before", "score_after")]
    ranks = [(c.abs() if absolute else c).rank("average") for c in columns]
    return float(table.select(pl.corr(*ranks))[0, 0])


def circuit_similarity(before: pl.DataFrame, after: pl.DataFrame) -> dict:
    """Return node/edge Jaccard, added/removed edge counts, node/edge counts and the score Spearman."""
    nodes_b, nodes_a = circuit_nodes(before), circuit_nodes(after)
    edges_b, edges_a = circuit_edges(before), circuit_edges(after)
    return {
        "node_jaccard": jaccard(nodes_b, nodes_a),
        "edge_jaccard": jaccard(edges_b, edges_a),
        "edges_added": len(edges_a - edges_b),
        "edges_removed": len(edges_b - edges_a),
        "nodes_before": len(nodes_b),
        "nodes_after": len(nodes_a),
        "edges_before": len(edges_b),
        "edges_after": len(edges_a),
        "score_spearman": score_spearman(before, after),
        "abs_score_spearman": score_spearman(before, after, absolute=True),
    }


# --- agreement with a ground truth ---------------------------------------------------------
AGREEMENT_TOP = 0.05  # the top share of edges whose overlap measures agreement (the default circuit's size)


def score_agreement(scores: pl.DataFrame, truth: pl.DataFrame, top: float = AGREEMENT_TOP) -> dict:
    """Return how closely one edges table's scores follow another's (the ground truth, e.g. exact patching),
    over all edges: ``pearson`` and ``spearman`` of the signed scores, and ``top_overlap``: the share of the
    truth's top ``top`` edges by |score| that are also among the scores' top ``top`` (ties: table order)."""
    if not 0 < top <= 1:
        raise ValueError(f"top (a share of edges) must be in (0, 1], got {top}")
    table = _aligned(scores, truth)
    method, exact = (pl.col(c).cast(pl.Float64) for c in ("score_before", "score_after"))
    count = max(1, round(top * table.height))
    chosen = [set(table.select(KEY, m=c.abs()).sort("m", descending=True, maintain_order=True)
                  .head(count).select(KEY).iter_rows()) for c in (method, exact)]  # fmt: skip
    correlations = table.select(
        pearson=pl.corr(method, exact), spearman=pl.corr(method, exact, method="spearman")
    ).row(0, named=True)
    return {
        "pearson": float(correlations["pearson"]),
        "spearman": float(correlations["spearman"]),
        "top_overlap": len(chosen[0] & chosen[1]) / count,
    }


# --- Algorithm 1 ---------------------------------------------------------------------------
def edge_changes(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """Return source, destination, status (kept/added/removed) and delta for every edge in either circuit.

    delta = |s_after - s_before| for an edge in both circuits, else |s| in the circuit that has it.
    """
    inb, ina = pl.col("in_before"), pl.col("in_after")
    both = inb & ina
    sb, sa = pl.col("score_before").cast(pl.Float64), pl.col("score_after").cast(pl.Float64)
    status = pl.when(both).then(pl.lit("kept")).when(inb).then(pl.lit("removed")).otherwise(pl.lit("added"))
    delta = pl.when(both).then((sa - sb).abs()).when(inb).then(sb.abs()).otherwise(sa.abs())
    return _aligned(before, after).filter(inb | ina).select(*KEY, status=status, delta=delta)


def layer_scores(
    changes: pl.DataFrame,
    layers: int,
    variant: LayerVariant = "source",
) -> pl.DataFrame:
    """Return ``layer`` (0..layers-1, all present) and ``score`` = summed delta of the edges credited to it.

    "source": the source node's layer, ``input`` as layer 0 (the paper). "source_no_input": the same
    without edges from ``input``. "destination": the destination node's layer; edges into ``logits``
    are left out, since logits belong to no layer.
    """
    check_choice(LayerVariant, variant, "layer-score variant")
    source, destination = pl.col("source"), pl.col("destination")
    if variant == "source":
        layer = pl.when(source == "input").then(0).otherwise(_layer_of("source"))
        credited = changes.with_columns(layer=layer)
    elif variant == "source_no_input":
        credited = changes.filter(source != "input").with_columns(layer=_layer_of("source"))
    else:  # destination
        credited = changes.filter(destination != "logits").with_columns(layer=_layer_of("destination"))
    if credited["layer"].null_count():
        raise ValueError("changes table holds names that are not node names")
    outside = credited.filter((pl.col("layer") < 0) | (pl.col("layer") >= layers))
    if outside.height:
        raise ValueError(f"changes credit layer {outside['layer'][0]}, outside 0..{layers - 1}")
    sums = credited.group_by("layer").agg(score=pl.col("delta").cast(pl.Float64).sum())
    frame = pl.DataFrame({"layer": list(range(layers))}, schema={"layer": pl.Int64})
    return frame.join(sums, on="layer", how="left").with_columns(pl.col("score").fill_null(0.0)).sort("layer")


def critical_layers(scores: pl.DataFrame, rule: CriticalRule = "topk", k: int = 5) -> list[int]:
    """Return the critical layers, highest score first (ties: lower layer first).

    "topk": the k best layers. "mean_std": every layer with score > mean + std, where std is the
    population standard deviation (ddof=0).
    """
    check_choice(CriticalRule, rule, "critical-layer rule")
    ranked = scores.sort(["score", "layer"], descending=[True, False])
    if rule == "topk":
        if not 1 <= k <= scores.height:
            raise ValueError(f"k={k} must lie in 1..{scores.height} (the number of layers)")
        return ranked["layer"].head(k).to_list()
    score = pl.col("score").cast(pl.Float64)  # mean_std
    return ranked.filter(score > score.mean() + score.std(ddof=0))["layer"].to_list()
