"""Tests for ftcircuits.report.circuit_figures: each figure writes a PNG atomically, of the expected size,
drawing the data it was given."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb, to_rgba

from ftcircuits.report import circuit_figures as cf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def drawn(monkeypatch) -> list[plt.Figure]:
    """The figures the functions under test close after saving, kept for inspection."""
    figures = []
    close = plt.close

    def keep(fig=None):
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def _png(out: Path, path: Path, size: tuple[int, int]) -> np.ndarray:
    """Check the PNG at ``path`` (returned, alone in its folder, ``size`` = (height, width) pixels);
    return its RGBA pixels."""
    assert out == path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
    image = mpimg.imread(path)
    assert image.shape == (*size, 4)
    return image


def _pixels_of(image: np.ndarray, color: str) -> int:
    """Return how many pixels are exactly ``color`` (8-bit rounding allowed)."""
    return int((np.abs(image[..., :3] - np.array(to_rgb(color))) < 1 / 255).all(axis=-1).sum())


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


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
def test_similarity_over_steps(tmp_path: Path, drawn, with_accuracy: bool) -> None:
    path = tmp_path / "sim.png"
    data = _similarity(with_accuracy)
    _png(cf.similarity_over_steps(data.reverse(), path), path, (528, 840))  # 7 x 4.4 in at 120 dpi
    (fig,) = drawn
    ax, *twin = fig.axes
    assert len(twin) == int(with_accuracy)
    columns = ["node_jaccard_base", "node_jaccard_prev", "edge_jaccard_base", "edge_jaccard_prev"]
    assert len(ax.lines) == 4
    for line, column in zip(ax.lines, columns, strict=True):  # sorted by step, a null is a gap (NaN)
        np.testing.assert_array_equal(line.get_xdata(), [0, 100, 200, 300])
        np.testing.assert_array_equal(line.get_ydata(), data[column].fill_null(np.nan).to_numpy())
    labels = ["node Jaccard vs base", "node Jaccard vs previous checkpoint",
              "edge Jaccard vs base", "edge Jaccard vs previous checkpoint"]  # fmt: skip
    assert [line.get_label() for line in ax.lines] == labels
    assert _legend(ax) == labels + ["accuracy"] * with_accuracy
    assert ax.get_ylim() == (0, 1)
    if with_accuracy:
        (accuracy,) = twin[0].lines
        np.testing.assert_array_equal(accuracy.get_ydata(), [0.5, 0.7, 0.85, 0.9])
        assert twin[0].get_ylim() == (0, 1)


def _layer_scores() -> pl.DataFrame:
    rows = [
        {"layer": layer, "variant": variant, "score": (layer + 1) * (i + 1) / 10}
        for i, variant in enumerate(["source", "source_no_input", "destination"])
        for layer in range(6)
    ]
    return pl.DataFrame(rows)


@pytest.mark.parametrize("critical", [None, {"source": [1, 3], "destination": [0]}])
def test_layer_score_bars(tmp_path: Path, drawn, critical) -> None:
    path = tmp_path / "bars.png"
    scores = _layer_scores()
    out = cf.layer_score_bars(scores, path, critical=critical, title="scores")
    image = _png(out, path, (384, 1224))  # 3 panels x 3.4 in, 3.2 in, at 120 dpi
    (fig,) = drawn
    assert fig.get_suptitle() == "scores"
    assert [ax.get_title() for ax in fig.axes] == ["source", "source_no_input", "destination"]
    red, blue = to_rgba("tab:red"), to_rgba("tab:blue")
    for i, ax in enumerate(fig.axes):
        assert [bar.get_height() for bar in ax.patches] == pytest.approx(
            [(x + 1) * (i + 1) / 10 for x in range(6)]
        )
        marked = set((critical or {}).get(ax.get_title(), ()))
        assert [bar.get_facecolor() for bar in ax.patches] == [red if x in marked else blue for x in range(6)]
        assert (ax.get_legend() is not None) is bool(marked)
    # critical layers are red bars (and a legend line); without them not one pixel is red
    assert (_pixels_of(image, "tab:red") > 500) is (critical is not None)
    assert _pixels_of(image, "tab:blue") > 5000


def _statuses(fig: plt.Figure) -> dict[tuple[float, ...], int]:
    """Return the drawn edge segments per colour."""
    (ax,) = fig.axes
    found = {}
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            (color,) = collection.get_colors()
            found[tuple(to_rgb(color))] = len(collection.get_segments())
    return found


def test_circuit_drawing_all_statuses(tmp_path: Path, drawn) -> None:
    edges = pl.DataFrame(
        {
            "source": ["input", "a0.h1", "a0.h1", "m0", "a1.h0", "m1", "input"],
            "destination": ["a0.h1<q>", "a1.h0<k>", "m0", "a1.h0<v>", "logits", "logits", "m1"],
            "status": ["kept", "kept", "added", "removed", "added", "kept", "removed"],
        }
    )
    path = tmp_path / "circuit.png"
    _png(cf.circuit_drawing(edges, path, layers=2, heads=2, title="tiny"), path, (495, 660))  # 6 x 4.5 in
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_title() == "tiny"
    assert _legend(ax) == ["kept (3)", "removed (2)", "added (2)"]
    assert _statuses(fig) == {to_rgb("0.55"): 3, to_rgb("tab:red"): 2, to_rgb("tab:green"): 2}


def test_circuit_drawing_empty_and_bad_input(tmp_path: Path, drawn) -> None:
    empty = pl.DataFrame(
        {"source": [], "destination": [], "status": []},
        schema={c: pl.String for c in ("source", "destination", "status")},
    )
    path = tmp_path / "empty.png"
    _png(cf.circuit_drawing(empty, path, layers=2, heads=2), path, (495, 660))
    (fig,) = drawn
    assert _legend(fig.axes[0]) == ["kept (0)", "removed (0)", "added (0)"] and _statuses(fig) == {}
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


@pytest.mark.parametrize(
    ("layers", "heads", "n", "size"), [(6, 8, 3600, (561, 715)), (24, 16, 20000, (1452, 1111))]
)
def test_circuit_drawing_large_draws_every_edge_once(tmp_path: Path, drawn, layers, heads, n, size) -> None:
    edges = _random_edges(layers, heads, n)
    path = tmp_path / "big.png"
    out = cf.circuit_drawing(edges, path, layers=layers, heads=heads, title=f"{layers}x{heads}")
    _png(out, path, size)  # the figure grows with the grid
    (fig,) = drawn
    counts = Counter(edges["status"].to_list())
    assert _legend(fig.axes[0]) == [f"{s} ({counts[s]})" for s in ("kept", "removed", "added")]
    # one segment per distinct (source, destination node) of a status: q, k and v of a head are one node
    segments = {
        status: len({(s, re.sub(r"<[qkv]>$", "", d)) for s, d, st in edges.iter_rows() if st == status})
        for status in counts
    }
    colors = {"kept": "0.55", "removed": "tab:red", "added": "tab:green"}
    assert _statuses(fig) == {to_rgb(colors[s]): segments[s] for s in counts}
    assert all(segments[s] < counts[s] for s in counts)  # duplicates were really collapsed


def _robustness(slope: float = 0.5) -> pl.DataFrame:
    ratios = [round(0.1 * i, 1) for i in range(1, 10)]
    return pl.DataFrame(
        {
            "ratio": ratios * 2,
            "model": ["base"] * 9 + ["random-init"] * 9,
            "edge_jaccard": [1 - slope * r for r in ratios] + [1 - r for r in ratios],
        }
    )


def test_robustness_curves(tmp_path: Path, drawn) -> None:
    df = _robustness()
    path = tmp_path / "robust.png"
    _png(cf.robustness_curves(df.reverse(), path), path, (432, 660))  # 5.5 x 3.6 in at 120 dpi
    (fig,) = drawn
    (ax,) = fig.axes
    ratios = [round(0.1 * i, 1) for i in range(1, 10)]
    assert [line.get_label() for line in ax.lines] == ["random-init", "base"]  # in order of appearance
    for line, model in zip(ax.lines, ["random-init", "base"], strict=True):  # each sorted by ratio
        np.testing.assert_allclose(line.get_xdata(), ratios)
        np.testing.assert_allclose(line.get_ydata(), df.filter(pl.col("model") == model)["edge_jaccard"])
    assert (ax.get_xlim(), ax.get_ylim()) == ((0, 1), (0, 1))


def _faithfulness(top: float = 1.02) -> pl.DataFrame:
    budgets = [0.0, 0.001, 0.01, 0.05, 0.1, 0.5]
    return pl.DataFrame(
        {
            "budget": budgets * 2,
            "circuit": ["merged (union)"] * 6 + ["own"] * 6,
            "faithfulness": [0.0, 0.2, 0.5, 0.8, 0.9, 1.0, 0.0, 0.1, 0.4, 0.7, 0.95, top],
        }
    )


def test_faithfulness_by_budget(tmp_path: Path, drawn) -> None:
    path = tmp_path / "faith.png"
    _png(cf.faithfulness_by_budget(_faithfulness(), path, title="budget"), path, (432, 660))
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_title() == "budget" and ax.get_xscale() == "log"
    curves, reference = ax.lines[:2], ax.lines[2:]
    assert [line.get_label() for line in curves] == ["merged (union)", "own"]
    for line, ys in zip(curves, ([0.2, 0.5, 0.8, 0.9, 1.0], [0.1, 0.4, 0.7, 0.95, 1.02]), strict=True):
        np.testing.assert_allclose(line.get_xdata(), [0.1, 1, 5, 10, 50])  # percent; budget 0 is left out
        np.testing.assert_allclose(line.get_ydata(), ys)
    (line,) = reference  # faithfulness 1, the model itself
    assert list(line.get_ydata()) == [1.0, 1.0]


DRAWINGS = {
    "similarity": (cf.similarity_over_steps, _similarity(True),
                   _similarity(True).with_columns(edge_jaccard_base=pl.col("edge_jaccard_base") / 2)),
    "layer_scores": (cf.layer_score_bars, _layer_scores(),
                     _layer_scores().with_columns(score=pl.col("score").reverse())),
    "circuit": (lambda d, p: cf.circuit_drawing(d, p, layers=6, heads=8), _random_edges(6, 8, 300),
                _random_edges(6, 8, 300, seed=1)),
    "robustness": (cf.robustness_curves, _robustness(), _robustness(slope=0.2)),
    "faithfulness": (cf.faithfulness_by_budget, _faithfulness(), _faithfulness(top=0.6)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_the_pixels_follow_the_data(tmp_path: Path, name: str) -> None:
    draw, data, other = DRAWINGS[name]
    images = [mpimg.imread(draw(frame, tmp_path / f"{i}.png")) for i, frame in enumerate([data, data, other])]
    assert np.array_equal(images[0], images[1])  # the same data: the same picture
    assert images[0].shape == images[2].shape and not np.array_equal(images[0], images[2])
