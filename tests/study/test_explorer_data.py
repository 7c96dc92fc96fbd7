"""The explorer's data (study.explorer) from a synthetic run's real circuit files: the files' circuits at
their budget, the library's selection at the others, node scores, ground truth and side-by-side circuits."""

from __future__ import annotations

import base64
import json

import numpy as np
import polars as pl
import pytest

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_files, circuit_mask, read_circuit
from ftcircuits.circuits.selection import Selection, select_circuit
from ftcircuits.report.explorer import explorer_html, page_payload
from ftcircuits.study.explorer import edge_arrays, explorer_data, graph_nodes, node_score_map
from ftcircuits.study.synthetic_circuits import write_synthetic_circuits

GRAPH = Graph(layers=3, heads=4, kv_heads=4, parallel_blocks=True)
STEPS = [0, 100, 200]


@pytest.fixture()
def run_circuits(tmp_path):
    return write_synthetic_circuits(tmp_path / "circuits", GRAPH, STEPS, Selection(budget=0.1), seed=1)


def test_graph_nodes_and_edges_follow_the_graph():
    names, layer, head = graph_nodes(GRAPH)
    assert names[:3] == ["input", "a0.h0", "a0.h1"] and names[-2:] == ["m2", "logits"]
    assert (layer[0], head[0]) == (-1, -1)
    assert (layer[names.index("a1.h3")], head[names.index("a1.h3")]) == (1, 3)
    assert (layer[names.index("m2")], head[names.index("m2")]) == (2, -1)
    assert (layer[-1], head[-1]) == (3, -1)
    sources, destinations, parts = edge_arrays(GRAPH, names)
    pairs = zip(destinations, parts, strict=True)
    labels = [names[d] + ("" if p == 0 else f"<{'-qkv'[p]}>") for d, p in pairs]
    assert list(zip([names[s] for s in sources], labels, strict=True)) == GRAPH.edge_names()


def test_node_scores_fall_back_to_the_row_sum_of_outgoing_edges(hand_built_circuit):
    edges = hand_built_circuit({("input", "logits"): 2.0, ("input", "m0"): -0.5, ("m0", "logits"): 1.5})
    scores = node_score_map({"attribution": {"method": "eap-ig-inputs"}}, edges)
    assert scores["input"] == 1.5 and scores["m0"] == 1.5 and scores["a1.h0"] == 0.0
    assert node_score_map({"node_scores": {"m0": 7.0}}, edges) == {"m0": 7.0}
    assert node_score_map({"attribution": {"method": "exact"}}, edges) == {}  # whole-node patches unknown


def test_circuits_at_each_budget_are_the_files_and_the_librarys(run_circuits):
    data = explorer_data(run_circuits, GRAPH, "synthetic", budgets=[0.05, 0.2])
    assert data.budgets == [0.05, 0.1, 0.2] and data.budget == 0.1
    assert [s.step for s in data.snapshots] == STEPS
    mask = GRAPH.edge_mask
    for snap, step in zip(data.snapshots, STEPS, strict=True):
        edges, meta = read_circuit(run_circuits / f"step-{step:06d}", graph=GRAPH)
        scores, in_circuit = circuit_mask(edges, GRAPH)
        assert np.array_equal(snap.circuits[0.1], np.flatnonzero(in_circuit[mask].numpy()))
        assert len(snap.circuits[0.1]) == meta["edges_in_circuit"]
        for budget in (0.05, 0.2):
            chosen = select_circuit(scores, GRAPH, "top", budget=budget)
            assert np.array_equal(snap.circuits[budget], np.flatnonzero(chosen[mask].numpy()))
        assert np.array_equal(snap.scores, scores[mask].numpy())
        sums = edges.group_by("source").agg(pl.col("score").cast(pl.Float64).sum())
        expected = dict(sums.iter_rows())
        names = data.node_names
        assert snap.node_scores[names.index("a1.h2")] == np.float32(expected["a1.h2"])
        assert np.isnan(snap.node_scores[names.index("logits")])
        assert snap.exact_scores is None


def test_ground_truth_and_side_by_side_circuits(run_circuits, tmp_path):
    exact = write_synthetic_circuits(tmp_path / "exact", GRAPH, STEPS[:2], Selection(budget=0.1), seed=2)
    other = write_synthetic_circuits(tmp_path / "other", GRAPH, [300], Selection(budget=0.1), seed=3)
    data = explorer_data(run_circuits, GRAPH, "synthetic", budgets=[0.1], ground_truth=exact,
                         others={"circuitlora, step 300": other / "step-000300"})  # fmt: skip
    assert [(s.label, s.step) for s in data.snapshots] == [
        ("step 0", 0), ("step 100", 100), ("step 200", 200), ("circuitlora, step 300", None)
    ]  # fmt: skip
    exact_edges = read_circuit(exact / "step-000100")[0]
    expected = circuit_mask(exact_edges, GRAPH)[0][GRAPH.edge_mask]
    assert np.array_equal(data.snapshots[1].exact_scores, expected)
    assert data.snapshots[2].exact_scores is None  # no exact circuit of step 200
    other_edges = read_circuit(other / "step-000300")[0]
    assert len(data.snapshots[3].circuits[0.1]) == other_edges["in_circuit"].sum()


def test_files_selected_differently_are_refused(run_circuits):
    _, meta_path = circuit_files(run_circuits / "step-000100")
    meta = json.loads(meta_path.read_text())
    meta["selection"]["budget"] = 0.2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different rules"):
        explorer_data(run_circuits, GRAPH, "synthetic")


def test_page_embeds_its_data_safely(run_circuits):
    data = explorer_data(run_circuits, GRAPH, "a </script><b>title", budgets=[0.1])
    page = explorer_html(data)
    assert page.count("</script>") == 2  # the data's own and the script's: the title cannot close one
    assert "a &lt;/script&gt;&lt;b&gt;title" in page
    payload = page_payload(data)
    assert payload["edges"] == GRAPH.n_edges and payload["budgets"] == [0.1]
    assert "http://" not in page and "https://" not in page  # nothing fetched


def _decoded(circuit: dict) -> np.ndarray:
    if "indices" in circuit:
        return np.frombuffer(base64.b64decode(circuit["indices"]), dtype="<u4")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(circuit["bits"]), dtype=np.uint8), bitorder="little")
    return np.flatnonzero(bits[: GRAPH.n_edges])


def test_circuits_travel_as_indices_or_a_bitmask_whichever_is_smaller(run_circuits):
    data = explorer_data(run_circuits, GRAPH, "synthetic", budgets=[0.02, 0.5])
    payload = page_payload(data)
    for snap, sent in zip(data.snapshots, payload["snapshots"], strict=True):
        forms = [next(iter(c)) for c in sent["circuits"]]
        sizes = [len(snap.circuits[b]) for b in data.budgets]
        assert forms == ["indices" if 32 * n <= GRAPH.n_edges else "bits" for n in sizes]
        assert forms[0] == "indices" and forms[-1] == "bits"  # 2% and 50% of the edges
        for budget, circuit in zip(data.budgets, sent["circuits"], strict=True):
            assert np.array_equal(_decoded(circuit), snap.circuits[budget])
