"""Headline numbers over several fine-tuning seeds: per-seed values, mean ± std, critical-layer stability."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ftcircuits.paths import atomic_file
from ftcircuits.report.circuit_figures import similarity_bands_figure
from ftcircuits.study.analysis import RunAnalysis
from ftcircuits.study.dynamics import HEADLINE_FILE


def seed_table(headlines: Mapping[object, dict]) -> pl.DataFrame:
    """Return one row per seed (or run) with every scalar headline number (lists and tables are left
    out, and so are numbers only some headlines have, such as robustness computed for one seed)."""
    rows = []
    for seed, headline in headlines.items():
        scalars = {k: float(v) for k, v in headline.items() if type(v) in (int, float)}  # bools are flags
        rows.append({"seed": seed, **scalars})
    shared = set.intersection(*(set(row) for row in rows))
    return pl.DataFrame([{k: v for k, v in row.items() if k in shared} for row in rows])


def seed_summary(table: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Return, per headline number, its mean and sample std over the seeds (``table``: ``seed_table``)."""
    columns = [c for c in table.columns if c != "seed"]
    return {c: {"mean": table[c].mean(), "std": table[c].std()} for c in columns}


CRITICAL_RULES = {"topk": "critical_layers_topk", "mean_std": "critical_layers_mean_std"}


def layer_stability(headlines: Mapping[object, dict]) -> pl.DataFrame:
    """Return how often each layer is critical across seeds, per rule and layer-score variant: (rule,
    variant, layer, seeds_chosen, seeds) for every layer chosen at least once."""
    counts: dict[tuple[str, str, int], int] = {}
    for headline in headlines.values():
        for rule, key in CRITICAL_RULES.items():
            for variant, layers in headline[key].items():
                for layer in layers:
                    counts[rule, variant, layer] = counts.get((rule, variant, layer), 0) + 1
    rows = [{"rule": r, "variant": v, "layer": layer, "seeds_chosen": n, "seeds": len(headlines)}
            for (r, v, layer), n in counts.items()]  # fmt: skip
    schema = {"rule": pl.String, "variant": pl.String, "layer": pl.Int64, "seeds_chosen": pl.Int64,
              "seeds": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("rule", "variant", "layer")


def similarity_bands(similarities: Mapping[object, pl.DataFrame]) -> pl.DataFrame:
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


def budget_bands(headlines: Mapping[object, dict]) -> pl.DataFrame:
    """Return per edge budget the mean and std over seeds of node and edge Jaccard, base vs final (from
    each headline's ``jaccard_final_vs_base_by_budget``); empty when the headlines have none."""
    rows = [row | {"seed": str(seed)} for seed, headline in headlines.items()
            for row in headline.get("jaccard_final_vs_base_by_budget", [])]  # fmt: skip
    if not rows:
        return pl.DataFrame()
    columns = ("node_jaccard", "edge_jaccard")
    return (
        pl.DataFrame(rows)
        .group_by("budget")
        .agg(
            *(pl.col(c).mean().alias(f"{c}_mean") for c in columns),
            *(pl.col(c).std().alias(f"{c}_std") for c in columns),
            pl.len().alias("seeds"),
        )
        .sort("budget")
    )


def write_across(
    headlines: Mapping[object, dict], similarities: Mapping[object, pl.DataFrame], out: Path
) -> dict:
    """Write the headline over several seeds or runs to ``out``: ``headline.json`` (``seeds``: each one's
    headline; ``summary``: mean and std; ``critical_layer_stability``), ``seeds.parquet``,
    ``layer_stability.parquet``, ``similarity_bands.parquet``, ``budget_bands.parquet`` (Jaccard against
    the budget) and ``similarity_bands.png``; return the json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, stability = seed_table(headlines), layer_stability(headlines)
    bands, budgets = similarity_bands(similarities), budget_bands(headlines)
    summary = {"seeds": {str(s): h for s, h in headlines.items()}, "summary": seed_summary(table),
               "critical_layer_stability": stability.to_dicts(), "by_budget": budgets.to_dicts()}  # fmt: skip
    tables = {
        "seeds": table,
        "layer_stability": stability,
        "similarity_bands": bands,
        "budget_bands": budgets,
    }
    for name, frame in tables.items():
        with atomic_file(out / f"{name}.parquet") as tmp:
            frame.write_parquet(tmp)
    with atomic_file(out / HEADLINE_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    similarity_bands_figure(bands, out / "similarity_bands.png")
    return summary


@dataclass(frozen=True)
class SeedsSummary:
    """The headline over several seeds or runs: its JSON (``write_across``) and where it is written."""

    summary: dict = field(repr=False)
    out: Path

    def describe(self) -> str:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
            numbers = str(pl.DataFrame([{"number": k, **v} for k, v in self.summary["summary"].items()]))
            stability = str(pl.DataFrame(self.summary["critical_layer_stability"]))
        return (f"{numbers}\n{stability}\nheadline: {self.out / HEADLINE_FILE}; "
                f"figure: {self.out / 'similarity_bands.png'}")  # fmt: skip


def summary_over_runs(analyses: Mapping[object, RunAnalysis], out: Path) -> SeedsSummary:
    """The seeds-summary stage: write the headline of several runs' analyses (seeds, usually) as mean ± std,
    critical-layer stability and bands to ``out`` (``write_across``); return it."""
    headlines = {label: analysis.headline for label, analysis in analyses.items()}
    similarities = {label: analysis.tables["similarity"] for label, analysis in analyses.items()}
    return SeedsSummary(write_across(headlines, similarities, out), Path(out))
