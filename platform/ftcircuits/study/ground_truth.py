"""Ground truth at every checkpoint: how closely the method's edge scores follow exact patching's, and
whether the exact circuits themselves keep their nodes while their edges change (the headline's
"nodes persist, edges rewire" without attribution error).

Reads the exact circuits ``jobs.circuits --run ... --set ground_truth=true`` wrote beside the method's
(``over_run.ground_truth_settings``) and returns polars columns for the analysis' similarity table.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ftcircuits.circuits.compare import AGREEMENT_TOP, circuit_similarity, score_agreement, score_spearman
from ftcircuits.study.dynamics import checkpoint_circuits, read_summary
from ftcircuits.study.over_run import SUMMARY_FILE

AGREEMENT = ("pearson", "spearman", "abs_spearman", "top_overlap")  # columns truth_<key>
EXACT_SIMILARITY = ("node_jaccard", "edge_jaccard", "abs_score_spearman")  # columns exact_<key>_base


def ground_truth_hint(run: Path) -> str:
    """Return the command that computes ``run``'s ground-truth circuits."""
    return (
        f"python -m jobs.circuits --run {run} --set ground_truth=true (with the same --set settings) "
        "computes them"
    )


def exact_checkpoint_circuits(
    out: Path, steps: list[int]
) -> tuple[list[tuple[int, pl.DataFrame]], pl.DataFrame]:
    """Return (step, edges) of the exact circuit of every checkpoint step in ``steps``, from ``out`` (the
    ground truth's ``<run>/circuits/<hash>``), and their (step, exact_faithfulness); FileNotFoundError
    naming the command that computes them when any is missing (before the analysis writes anything)."""
    run = Path(out).parent.parent
    if not (Path(out) / SUMMARY_FILE).is_file():
        raise FileNotFoundError(
            f"ground_truth=true, but {run} has no exact circuits ({Path(out) / SUMMARY_FILE} is missing): "
            f"{ground_truth_hint(run)}"
        )
    summary = read_summary(out)
    found = set(summary.filter(pl.col("model") == "checkpoint")["step"].to_list())
    missing = sorted(set(steps) - found)
    if missing:
        raise FileNotFoundError(
            f"ground_truth=true, but {out} lacks the exact circuits of steps {missing}: "
            f"{ground_truth_hint(run)}"
        )
    wanted = summary.filter((pl.col("model") == "checkpoint") & pl.col("step").is_in(steps))
    faithfulness = wanted.select("step", exact_faithfulness="faithfulness").sort("step")
    return checkpoint_circuits(out, wanted), faithfulness


def agreement_over_steps(
    method: list[tuple[int, pl.DataFrame]],
    exact: list[tuple[int, pl.DataFrame]],
    top: float = AGREEMENT_TOP,
) -> pl.DataFrame:
    """Return per step of ``method`` (step, edges; the first is the base) the agreement of its scores with
    the exact ones of the same step (``truth_pearson``, ``truth_spearman``, ``truth_top_overlap``:
    ``circuits.compare.score_agreement``; ``truth_abs_spearman``: Spearman of |scores|), and the exact
    circuit's node/edge Jaccard and |score| Spearman against the exact circuit of the first step
    (``exact_node_jaccard_base``, ...)."""
    truth = dict(exact)
    missing = sorted({step for step, _ in method} - set(truth))
    if missing:
        raise ValueError(f"no exact circuit of steps {missing}")
    base = truth[method[0][0]]
    rows = []
    for step, edges in method:
        agreement = score_agreement(edges, truth[step], top)
        # |score| ranks, the order selection uses: most edges score near zero, their signed ranks are noise
        agreement["abs_spearman"] = score_spearman(edges, truth[step], absolute=True)
        similarity = circuit_similarity(base, truth[step])
        rows.append(
            {"step": step}
            | {f"truth_{key}": agreement[key] for key in AGREEMENT}
            | {f"exact_{key}_base": similarity[key] for key in EXACT_SIMILARITY}
        )
    return pl.DataFrame(rows)


def ground_truth_headline(similarity: pl.DataFrame) -> dict:
    """Return the headline of the ground truth (``similarity``: the analysis' table with the
    ``agreement_over_steps`` columns): each agreement at the base and the final checkpoint and its change
    (final - base), and the exact circuits' node and edge Jaccard, final vs base."""
    table = similarity.sort("step")
    first, last = table.row(0, named=True), table.row(-1, named=True)
    headline: dict = {}
    for key in AGREEMENT:
        column = f"truth_{key}"
        headline |= {
            f"{column}_at_base": first[column],
            f"{column}_at_final": last[column],
            f"{column}_change": last[column] - first[column],
        }
    headline["exact_node_jaccard_final_vs_base"] = last["exact_node_jaccard_base"]
    headline["exact_edge_jaccard_final_vs_base"] = last["exact_edge_jaccard_base"]
    return headline
