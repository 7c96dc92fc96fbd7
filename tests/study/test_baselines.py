"""Robustness baselines that keep the output input-dependent, and the check that flags those that don't."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.discover import discover_circuit
from ftcircuits.circuits.selection import Selection
from ftcircuits.models.loader import load_model
from ftcircuits.models.swap import BASE, PERMUTED_PREFIX, SCALED_PREFIX, CheckpointWeights
from ftcircuits.study.baselines import briefly_trained_baseline, briefly_trained_dir
from ftcircuits.study.dynamics import DEGENERATE_KL, input_dependence, robustness_against_baselines
from ftcircuits.study.over_run import BASELINE_WEIGHTS, circuit_units, run_inputs
from ftcircuits.tasks.dataset import build_dataset
from ftcircuits.tasks.spec import TaskSpec


@pytest.fixture(scope="module")
def tiny_weights() -> CheckpointWeights:
    return CheckpointWeights(load_model("tiny"))


@pytest.fixture(scope="module")
def tiny_items(tiny_weights) -> pl.DataFrame:
    family = TaskSpec(name="addsub", range=100).family()
    return build_dataset(family, tiny_weights.loaded.tokenizer, 32, seed=0)[0]


def dependence(weights: CheckpointWeights, items: pl.DataFrame) -> dict:
    found = discover_circuit(weights.loaded, items, AttributionConfig(steps=2), Selection("top", 0.05))
    return found.metrics


def test_permuted_weights_are_the_base_values_reordered(tiny_weights):
    base = {n: p.detach().clone() for n, p in tiny_weights.model.named_parameters()}
    tiny_weights.swap_to(f"{PERMUTED_PREFIX}0")
    for name, param in tiny_weights.model.named_parameters():
        assert torch.equal(param.flatten().sort().values, base[name].flatten().sort().values), name
    embed = dict(tiny_weights.model.named_parameters())["gpt_neox.embed_in.weight"]
    assert not torch.equal(embed, base["gpt_neox.embed_in.weight"])
    tiny_weights.swap_to(BASE)
    assert all(torch.equal(p, base[n]) for n, p in tiny_weights.model.named_parameters())


def test_scaled_random_weights_have_each_base_tensors_mean_and_std(tiny_weights):
    base = {n: p.detach().clone() for n, p in tiny_weights.model.named_parameters()}
    tiny_weights.swap_to(f"{SCALED_PREFIX}0")
    for name, param in tiny_weights.model.named_parameters():
        if param.numel() < 1000:
            continue
        n, std = param.numel(), base[name].std()
        assert abs(param.mean() - base[name].mean()) < 5 * std / n**0.5, name  # 5 standard errors
        assert abs(param.std() / std - 1) < 5 * (2 / n) ** 0.5, name
        assert not torch.equal(param, base[name])
    tiny_weights.swap_to(BASE)


def test_a_constant_output_model_is_flagged_and_the_tiny_base_passes(tiny_weights, tiny_items):
    base = dependence(tiny_weights, tiny_items)
    assert base["input_kl"] > 100 * DEGENERATE_KL and base["score_std"] > 0
    norm = tiny_weights.model.gpt_neox.final_layer_norm
    saved = norm.weight.detach().clone(), norm.bias.detach().clone()
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()  # every position's logits are W @ 0: the same for every input
    constant = dependence(tiny_weights, tiny_items)
    with torch.no_grad():
        norm.weight.copy_(saved[0])
        norm.bias.copy_(saved[1])
    assert constant["input_kl"] == 0.0
    summary = pl.DataFrame([
        {"model": "base", "ratio": 0.0, "input_kl": base["input_kl"], "score_std": base["score_std"]},
        {"model": "random-init", "ratio": 0.0, "input_kl": constant["input_kl"],
         "score_std": constant["score_std"]},
        {"model": "base", "ratio": 0.5, "input_kl": 0.0, "score_std": 0.0},  # only ratio 0 is read
    ])  # fmt: skip
    flags = input_dependence(summary)
    assert flags.select("model", "degenerate").rows() == [("base", False), ("random-init", True)]


@pytest.mark.parametrize("baseline", ["random-scaled", "permuted"])
def test_the_new_baselines_are_input_dependent_on_the_tiny_model(tiny_weights, tiny_items, baseline):
    tiny_weights.swap_to(f"{BASELINE_WEIGHTS[baseline]}0")
    metrics = dependence(tiny_weights, tiny_items)
    tiny_weights.swap_to(BASE)
    assert metrics["input_kl"] > DEGENERATE_KL and metrics["score_std"] > 0


def test_robustness_against_baselines_states_the_gap_and_the_flag():
    robust = pl.DataFrame({
        "model": ["base", "base", "random-init", "random-init", "permuted", "permuted"],
        "ratio": [0.1, 0.5] * 3,
        "node_jaccard": [1.0, 0.8, 1.0, 1.0, 0.5, 0.3],
        "edge_jaccard": [0.9, 0.7, 1.0, 1.0, 0.5, 0.3],
        "degenerate": [False, False, True, True, False, False],
        "input_kl": [1.0, 1.0, 0.0, 0.0, 0.2, 0.2],
    })  # fmt: skip
    table = robustness_against_baselines(robust)
    assert table["baseline"].to_list() == ["random-init", "permuted"]
    assert table["gap"].to_list() == pytest.approx([0.8 - 1.0, 0.8 - 0.4])
    assert table["keeps_gap"].to_list() == [False, True]  # random-init: degenerate (and no gap)


@pytest.mark.slow  # 50 pre-training steps of the shipped tiny model at its recipe's 64 x 64 tokens
def test_the_briefly_trained_baseline_is_input_dependent_cached_and_distinct(
    tiny_weights, tiny_items, tmp_path
):
    steps = []
    path = briefly_trained_baseline("tiny", tmp_path, 50, seed=0, on_step=lambda s, loss: steps.append(s))
    assert path == briefly_trained_dir(tmp_path, 50, 0) and len(steps) == 50
    trained = dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())
    assert (
        briefly_trained_baseline("tiny", tmp_path, 50, seed=0, on_step=lambda s, loss: steps.append(s))
        == path
    )
    assert len(steps) == 50  # cached: not trained again
    base = dict(tiny_weights.model.named_parameters())
    assert trained.keys() == base.keys()
    assert not torch.equal(trained["gpt_neox.embed_in.weight"], base["gpt_neox.embed_in.weight"])
    tiny_weights.swap_to(path)  # loaded as a full-weights checkpoint
    metrics = dependence(tiny_weights, tiny_items)
    tiny_weights.swap_to(BASE)
    assert metrics["input_kl"] > DEGENERATE_KL and metrics["score_std"] > 0


def test_units_of_the_briefly_trained_baseline_load_its_directory(tiny_run, tmp_path):
    inputs = run_inputs(tiny_run)
    with pytest.raises(ValueError, match="needs its model directory"):
        circuit_units(inputs, True, baselines=("briefly-trained",))
    units = circuit_units(inputs, True, baselines=("permuted", "briefly-trained"), briefly_trained=tmp_path)
    trained = [u for u in units if u.model == "briefly-trained"]
    assert {u.weights for u in trained} == {str(tmp_path)} and trained[0].key == "briefly-trained-seed0-p0.00"
    assert len(trained) == len([u for u in units if u.model == "permuted"])


def test_robustness_ratios_pick_among_the_datasets_variants(tiny_run):
    inputs = run_inputs(tiny_run)  # its dataset has one perturbed variant, 0.5
    units = circuit_units(inputs, True, baselines=("permuted",), ratios=(0.5,))
    assert [(u.model, u.ratio) for u in units if u.model != "checkpoint"] == [
        ("base", 0.0), ("base", 0.5), ("permuted", 0.0), ("permuted", 0.5)]  # fmt: skip
    with pytest.raises(ValueError, match=r"robustness ratios \[0.3\] are not among"):
        circuit_units(inputs, True, ratios=(0.3,))
