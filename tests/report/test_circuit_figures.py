"""Tests for ftcircuits.report.circuit_figures: each figure writes a PNG atomically."""

from __future__ import annotations

import random
import time
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.report import circuit_figures as cf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(out: Path, path: Path) -> None:
    assert out == path
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def _similarity(with_accuracy: bool) -> pl.DataFrame:
    data = {
        "step": [0, 100, 200, 300],
        "node_jaccard_base": [1.0, 0.9, 0.8, 0.75],
        "edge_jaccard_base": [1.0, 0.7, 0.6, 0.5],
        "node_jaccard_prev": [None, 0.9, 0.95, 0.97],
        "edge_jaccard_prev": [None, 0.7, 0.85, 0.9],
    }
    if with_accuracy:
        data["accuracy"] = [0.5, 0.7, 0.85, 0.9]
    return pl.DataFrame(data)


@pytest.mark.parametrize("with_accuracy", [False, True])
def test_similarity_over_steps(tmp_path: Path, with_accuracy: bool) -> None:
    path = tmp_path / "sim.png"
    _assert_png(cf.similarity_over_steps(_similarity(with_accuracy), path), path)


@pytest.mark.parametrize("critical", [None, {"source": [1, 3], "destination": [0]}])
def test_layer_score_bars(tmp_path: Path, critical) -> None:
    rows = [
        {"layer": layer, "variant": variant, "score": (layer + 1) * (i + 1) / 10}
        for i, variant in enumerate(["source", "source_no_input", "destination"])
        for layer in range(6)
    ]
    path = tmp_path / "bars.png"
    _assert_png(cf.layer_score_bars(pl.DataFrame(rows), path, critical=critical, title="scores"), path)


def test_circuit_drawing_all_statuses(tmp_path: Path) -> None:
    edges = pl.DataFrame(
        {
            "source": ["input", "a0.h1", "a0.h1", "m0", "a1.h0", "m1", "input"],
            "destination": ["a0.h1<q>", "a1.h0<k>", "m0", "a1.h0<v>", "logits", "logits", "m1"],
            "status": ["kept", "kept", "added", "removed", "added", "kept", "removed"],
        }
    )
    path = tmp_path / "circuit.png"
    _assert_png(cf.circuit_drawing(edges, path, layers=2, heads=2, title="tiny"), path)


def test_circuit_drawing_empty_and_bad_input(tmp_path: Path) -> None:
    empty = pl.DataFrame(
        {"source": [], "destination": [], "status": []},
        schema={c: pl.String for c in ("source", "destination", "status")},
    )
    path = tmp_path / "empty.png"
    _assert_png(cf.circuit_drawing(empty, path, layers=2, heads=2), path)
    bad = pl.DataFrame({"source": ["input"], "destination": ["x9"], "status": ["kept"]})
    with pytest.raises(ValueError, match="unknown circuit node"):
        cf.circuit_drawing(bad, tmp_path / "bad.png", layers=2, heads=2)
    bad_status = pl.DataFrame({"source": ["input"], "destination": ["m0"], "status": ["moved"]})
    with pytest.raises(ValueError, match="unknown edge status"):
        cf.circuit_drawing(bad_status, tmp_path / "bad.png", layers=2, heads=2)
    assert not (tmp_path / "bad.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png"]


def _random_edges(layers: int, heads: int, n: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        dst_layer = rng.randrange(layers + 1)  # layers == logits
        src_layer = rng.randrange(dst_layer + 1) - 1  # -1 == input
        if src_layer < 0:
            source = "input"
        elif rng.random() < 0.2:
            source = f"m{src_layer}"
        else:
            source = f"a{src_layer}.h{rng.randrange(heads)}"
        if dst_layer == layers:
            destination = "logits"
        elif rng.random() < 0.2:
            destination = f"m{dst_layer}"
        else:
            destination = f"a{dst_layer}.h{rng.randrange(heads)}<{rng.choice('qkv')}>"
        rows.append((source, destination, rng.choice(["kept", "kept", "added", "removed"])))
    return pl.DataFrame(rows, schema=["source", "destination", "status"], orient="row")


@pytest.mark.parametrize(("layers", "heads", "n"), [(6, 8, 3600), (24, 16, 20000)])
def test_circuit_drawing_large_is_quick(tmp_path: Path, layers: int, heads: int, n: int) -> None:
    edges = _random_edges(layers, heads, n)
    path = tmp_path / "big.png"
    start = time.perf_counter()
    out = cf.circuit_drawing(edges, path, layers=layers, heads=heads, title=f"{layers}x{heads}")
    assert time.perf_counter() - start < 10.0
    _assert_png(out, path)


def test_robustness_curves(tmp_path: Path) -> None:
    ratios = [round(0.1 * i, 1) for i in range(1, 10)]
    df = pl.DataFrame(
        {
            "ratio": ratios * 2,
            "model": ["base"] * 9 + ["random-init"] * 9,
            "edge_jaccard": [1 - r / 2 for r in ratios] + [1 - r for r in ratios],
        }
    )
    path = tmp_path / "robust.png"
    _assert_png(cf.robustness_curves(df, path), path)


def test_faithfulness_by_budget(tmp_path: Path) -> None:
    budgets = [0.001, 0.01, 0.05, 0.1, 0.5]
    df = pl.DataFrame(
        {
            "budget": budgets * 2,
            "circuit": ["merged (union)"] * 5 + ["own"] * 5,
            "faithfulness": [0.2, 0.5, 0.8, 0.9, 1.0, 0.1, 0.4, 0.7, 0.95, 1.02],
        }
    )
    path = tmp_path / "faith.png"
    _assert_png(cf.faithfulness_by_budget(df, path, title="budget"), path)
