"""Headline numbers over several fine-tuning seeds: per-seed values, mean ± std, critical-layer stability."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl


def seed_table(headlines: Mapping[int, dict]) -> pl.DataFrame:
    """Return one row per seed with every scalar headline number (lists and tables are left out)."""
    rows = []
    for seed, headline in headlines.items():
        scalars = {k: float(v) for k, v in headline.items() if type(v) in (int, float)}  # bools are flags
        rows.append({"seed": seed, **scalars})
    return pl.DataFrame(rows)


def seed_summary(table: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Return, per headline number, its mean and sample std over the seeds (``table``: ``seed_table``)."""
    columns = [c for c in table.columns if c != "seed"]
    return {c: {"mean": table[c].mean(), "std": table[c].std()} for c in columns}


def layer_stability(headlines: Mapping[int, dict], key: str = "critical_layers_topk") -> pl.DataFrame:
    """Return how often each layer is critical across seeds, per layer-score variant: (variant, layer,
    seeds_chosen, seeds) for every layer chosen at least once."""
    counts: dict[tuple[str, int], int] = {}
    for headline in headlines.values():
        for variant, layers in headline[key].items():
            for layer in layers:
                counts[variant, layer] = counts.get((variant, layer), 0) + 1
    rows = [{"variant": v, "layer": layer, "seeds_chosen": n, "seeds": len(headlines)}
            for (v, layer), n in counts.items()]  # fmt: skip
    schema = {"variant": pl.String, "layer": pl.Int64, "seeds_chosen": pl.Int64, "seeds": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("variant", "layer")


def similarity_bands(similarities: Mapping[int, pl.DataFrame]) -> pl.DataFrame:
    """Return per step the mean and std over seeds of node and edge Jaccard against the base."""
    stacked = pl.concat([table.with_columns(seed=pl.lit(seed)) for seed, table in similarities.items()])
    return (
        stacked.group_by("step")
        .agg(
            *(pl.col(c).mean().alias(f"{c}_mean") for c in ("node_jaccard_base", "edge_jaccard_base")),
            *(pl.col(c).std().alias(f"{c}_std") for c in ("node_jaccard_base", "edge_jaccard_base")),
            pl.len().alias("seeds"),
        )
        .sort("step")
    )
