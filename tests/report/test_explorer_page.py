"""The circuit explorer in headless system Chromium (Playwright drives it): load the page, move the slider,
change the budget, click a node, and check what is drawn and listed against the circuit files."""

from __future__ import annotations

import polars as pl
import pytest

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_mask, read_circuit
from ftcircuits.circuits.selection import Selection, select_circuit
from ftcircuits.report.browser import open_page
from ftcircuits.study.explorer import write_explorer
from ftcircuits.study.synthetic_circuits import write_synthetic_circuits

GRAPH = Graph(layers=6, heads=8, kv_heads=8, parallel_blocks=True)  # 3,580 edges, like the tiny model
STEPS = [0, 100, 200, 300]
READY = "window.explorer && window.explorer.ready"
OTHER = "circuitlora, step 300"  # another run's circuit, shown only side by side


@pytest.fixture()
def explorer_page(tmp_path):
    out = write_synthetic_circuits(tmp_path / "circuits", GRAPH, STEPS, Selection(budget=0.15), seed=4)
    exact = write_synthetic_circuits(tmp_path / "exact", GRAPH, STEPS, Selection(budget=0.15), seed=5)
    other = write_synthetic_circuits(tmp_path / "other", GRAPH, [300], Selection(budget=0.15), seed=6)
    page = write_explorer(out, GRAPH, "synthetic run", tmp_path / "explorer.html", budgets=[0.01, 0.3],
                          ground_truth=exact, others={OTHER: other / "step-000300"})  # fmt: skip
    return page, out


def _circuit(out, step: int) -> pl.DataFrame:
    return read_circuit(out / f"step-{step:06d}", graph=GRAPH)[0]


def _busiest_node(edges: pl.DataFrame) -> str:
    """Return the node (not input or logits) with the most circuit edges in and out, at least one each way."""
    circuit = edges.filter("in_circuit")
    incoming = circuit.group_by(node=pl.col("destination").str.split("<").list.first()).len("incoming")
    outgoing = circuit.group_by(node=pl.col("source")).len("outgoing")
    both = incoming.join(outgoing, on="node").with_columns(edges=pl.col("incoming") + pl.col("outgoing"))
    return both.sort("edges", "node", descending=True)["node"][0]


@pytest.mark.slow
def test_explorer_draws_and_lists_the_circuit_files(explorer_page, browser_ready):
    page_path, out = explorer_page
    with open_page(page_path) as opened:
        page = opened.page
        page.wait_for_function(READY)
        final = _circuit(out, STEPS[-1])
        assert page.evaluate("explorer.drawnEdges") == final["in_circuit"].sum()  # opens on the last one

        page.locator("#step").fill("1")  # the slider, to step 100
        assert page.locator("#step-label").text_content() == "step 100 (2/4)"
        edges = _circuit(out, 100)
        assert page.evaluate("explorer.drawnEdges") == edges["in_circuit"].sum()
        drawn = page.locator("#view-b canvas").get_attribute("data-drawn-edges")
        assert drawn == str(edges["in_circuit"].sum())

        # re-selected by the library: 617 edges, over 600, so drawn into an image buffer
        page.select_option("#budget", label="30%")
        scores = circuit_mask(edges, GRAPH)[0]
        assert page.evaluate("explorer.drawnEdges") == select_circuit(scores, GRAPH, budget=0.3).sum().item()
        page.select_option("#budget", label="15% (files)")

        node = _busiest_node(edges)
        point = page.evaluate(f"explorer.nodePoint('{node}')")
        page.mouse.click(point["x"], point["y"])
        assert page.locator("#panel h2").text_content() == node
        rows = page.evaluate("explorer.panelRows()")
        circuit = edges.filter("in_circuit")
        expected = (
            circuit.filter(pl.col("destination").str.split("<").list.first() == node)
            .with_columns(direction=pl.lit("in"))
            .vstack(circuit.filter(pl.col("source") == node).with_columns(direction=pl.lit("out")))
        )
        listed = {(r["direction"], r["source"], r["destination"], r["score"]) for r in rows}
        assert listed == set(expected.select("direction", "source", "destination", "score").iter_rows())
        assert len(rows) == expected.height
        assert page.locator("#panel th", has_text="exact").count() == 2  # ground truth beside each score

        row = page.locator("#panel tr.edge-row").first  # an edge: its score and membership at every step
        source, destination = rows[0]["source"], rows[0]["destination"]
        row.click()
        assert page.locator("#panel h2").text_content() == f"{source} → {destination}"
        steps = page.locator("#panel tr.snapshot-row")
        cells = [(steps.nth(i).get_attribute("data-score"), steps.nth(i).get_attribute("data-in-circuit"))
                 for i in range(steps.count())]  # fmt: skip
        same_edge = (pl.col("source") == source) & (pl.col("destination") == destination)
        other = read_circuit(page_path.parent / "other" / "step-000300", graph=GRAPH)[0]
        files = [_circuit(out, step).filter(same_edge) for step in STEPS] + [other.filter(same_edge)]
        expected = [(f["score"][0], str(int(f["in_circuit"][0]))) for f in files]
        assert [(float(score), member) for score, member in cells] == expected

        page.check("#side")  # side by side: the base on the left, step 100 on the right
        assert page.evaluate("explorer.drawnEdgesA") == _circuit(out, 0)["in_circuit"].sum()
        page.select_option("#shown", label=OTHER)  # the base beside another run's final checkpoint
        assert page.evaluate("explorer.drawnEdges") == other["in_circuit"].sum()
        assert page.evaluate("explorer.drawnEdgesA") == _circuit(out, 0)["in_circuit"].sum()
        assert page.locator("#step-label").text_content() == OTHER
        assert page.evaluate("document.getElementById('step').classList.contains('elsewhere')")
        assert opened.errors == []
