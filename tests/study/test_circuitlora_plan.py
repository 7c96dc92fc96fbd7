"""Algorithm 1 on hand-built before/after circuits: known critical layers under each layer-score variant."""

from __future__ import annotations

import pytest

from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.loading import load_config
from ftcircuits.study.circuitlora import choose_critical_layers

# before: input -> a0.h0 (q) -> m0 -> logits; after: the q edge becomes a k edge, a0.h1 -> m1 joins.
BEFORE = {("input", "a0.h0<q>"): 0.5, ("a0.h0", "m0"): 2.0, ("m0", "logits"): -1.0}
AFTER = {("input", "a0.h0<k>"): -0.25, ("a0.h0", "m0"): 1.5, ("m0", "logits"): 1.0, ("a0.h1", "m1"): 3.0}


def config(**critical) -> CircuitLoraConfig:
    return load_config(CircuitLoraConfig, None, [f"critical.{k}={v}" for k, v in critical.items()])


@pytest.mark.parametrize(
    ("variant", "scores", "critical"),
    [
        # deltas: input->q 0.5 (removed), input->k 0.25 (added), a0.h0->m0 0.5, m0->logits 2.0, a0.h1->m1 3.0
        ("source", [6.25, 0.0], [0]),  # every source lies in layer 0 (input counts as layer 0)
        ("source_no_input", [5.5, 0.0], [0]),
        ("destination", [1.25, 3.0], [1]),  # q/k of a0.h0 and m0 in layer 0, m1 in layer 1, logits left out
    ],
)
def test_each_variant_gives_its_known_critical_layer(hand_built_circuit, variant, scores, critical):
    before, after = hand_built_circuit(BEFORE), hand_built_circuit(AFTER)
    table, chosen, k = choose_critical_layers(before, after, 2, config(variant=variant, k=1))
    assert table["score"].to_list() == pytest.approx(scores) and chosen == critical and k == 1


def test_k_scales_with_depth_and_a_rule_that_picks_nothing_is_refused(hand_built_circuit):
    assert [config().critical.k_for(layers) for layers in (2, 6, 24, 32)] == [1, 1, 5, 6]
    with pytest.raises(ValueError, match="critical k=2 must be below the model's 2 layers"):
        config(k=2).critical.k_for(2)
    before, after = hand_built_circuit(BEFORE), hand_built_circuit(AFTER)
    with pytest.raises(ValueError, match="marks no layer critical"):  # [6.25, 0]: nothing above mean + std
        choose_critical_layers(before, after, 2, config(rule="mean_std"))


def test_compositional_source_takes_the_merged_subtask_circuits_of_base_and_final(tiny_run, tmp_path):
    import json

    from ftcircuits.circuits.compare import edge_changes, layer_scores
    from ftcircuits.circuits.io import read_circuit
    from ftcircuits.circuits.merge import merge_circuits
    from ftcircuits.models.loader import load_tokenizer
    from ftcircuits.run_layout import DATA_DIR
    from ftcircuits.study.circuitlora import plan_circuitlora
    from ftcircuits.tasks.dataset import make_task_dataset
    from ftcircuits.tasks.io import MANIFEST_FILE
    from ftcircuits.tasks.spec import TaskSpec

    # the subtasks' datasets in the reference run, 100 items each (20 in the circuit split), as the plan would
    # build them (at the tasks' default 5000 items) were they missing
    tokenizer = load_tokenizer(str(tiny_run / "base"))
    manifests = []
    for part in ("inner", "outer"):
        spec = TaskSpec(name="compositional", part=part, size=100)
        directory, _ = make_task_dataset(spec, tokenizer, str(tiny_run / "base"), tiny_run / DATA_DIR)
        manifests.append(directory / MANIFEST_FILE)
    overrides = [
        "critical.source=compositional",
        "critical.k=1",
        "circuits.discovery.examples=16",
        "circuits.discovery.batch_size=8",
    ]
    chosen = load_config(CircuitLoraConfig, None, overrides)
    plan = plan_circuitlora(chosen, str(tiny_run / "base"), tiny_run, tmp_path)
    merged = []
    for name in ("base", "final"):
        parts = [
            read_circuit(tmp_path / "compositional" / name / f"compositional-{p}") for p in ("inner", "outer")
        ]
        assert [meta["examples"] for _, meta in parts] == [16, 16]
        edges = round(0.05 * parts[0][0].height)
        merged.append(merge_circuits([edges_ for edges_, _ in parts], edges))
    expected = layer_scores(edge_changes(*merged), 2, "source")
    assert plan.source == "compositional" and plan.layer_scores == pytest.approx(expected["score"].to_list())
    assert plan.critical_layers == [int(expected.sort("score", descending=True)["layer"][0])]
    stamp = (tmp_path / "compositional" / "final" / "compositional-inner.json").stat().st_mtime_ns
    assert plan_circuitlora(chosen, str(tiny_run / "base"), tiny_run, tmp_path) == plan  # read, not redone
    assert (tmp_path / "compositional" / "final" / "compositional-inner.json").stat().st_mtime_ns == stamp
    assert [json.loads(m.read_text())["requested_items"] for m in manifests] == [100, 100]  # not rebuilt


def test_the_plan_states_every_variants_critical_layers(hand_built_circuit):
    from ftcircuits.study.circuitlora import critical_layers_by_variant

    before, after = hand_built_circuit(BEFORE), hand_built_circuit(AFTER)
    by_variant = critical_layers_by_variant(before, after, 2, config(variant="destination", k=1))
    assert {v: d["critical_layers"] for v, d in by_variant.items()} == {
        "source": [0], "source_no_input": [0], "destination": [1]
    }  # fmt: skip
    assert by_variant["source"]["scores"] == pytest.approx([6.25, 0.0])
    strict = critical_layers_by_variant(before, after, 2, config(rule="mean_std"))
    assert strict["source"]["critical_layers"] == []  # [6.25, 0]: nothing above mean + std
