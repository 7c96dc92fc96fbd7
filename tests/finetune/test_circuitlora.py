"""CircuitLoRA's adapter: ranks land on exactly the critical layers' modules; budgets match the formula."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ftcircuits.finetune.circuitlora import (
    PAPER_PAIRS,
    RankPair,
    adapter_parameters,
    critical_lr_groups,
    layer_modules,
    matched_rank_pair,
    module_widths,
    rank_patterns,
    uniform_parameters,
)
from ftcircuits.finetune.methods import apply_method
from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.paths import TINY_BASE_DIR
from tests.circuits.tiny_models import tiny_random

PAIR = RankPair(other=2, critical=6)


def lora_parameters_by_module(model: torch.nn.Module) -> dict[str, int]:
    """Return the LoRA A+B parameter count of every adapted module, by its base-model name."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        match = re.match(r"base_model\.model\.(.+)\.lora_[AB]\.", name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + param.numel()
    return counts


@pytest.mark.parametrize("shape", ["tiny", "gpt2", "opt-6.7b", "pythia-1.4b-deduped", "tinyllama-1.1b"])
def test_rank_pattern_lands_on_exactly_the_critical_layers_modules(shape, small_model):
    model = small_model if shape == "tiny" else tiny_random(shape, dtype=torch.float32)
    arch = describe_architecture(model.config)
    widths = module_widths(model, arch)
    critical = [1]
    method = MethodConfig(name="lora", **rank_patterns(arch, critical, PAIR))
    counts = lora_parameters_by_module(apply_method(model, arch, method))
    critical_names = set(layer_modules(arch, 1))
    expected = {
        name: (PAIR.critical if name in critical_names else PAIR.other) * w for name, w in widths.items()
    }
    assert counts == expected
    assert sum(counts.values()) == adapter_parameters(widths, arch, critical, PAIR)


def test_alpha_follows_the_rank_at_twice_it(small_model):
    arch = describe_architecture(small_model.config)
    fields = rank_patterns(arch, [0], PAIR)
    peft_model = apply_method(small_model, arch, MethodConfig(name="lora", **fields))
    scalings = {
        name.removeprefix("base_model.model."): module.scaling["default"]
        for name, module in peft_model.named_modules()
        if isinstance(getattr(module, "scaling", None), dict)
    }
    assert fields["alpha"] == 4 and set(fields["alpha_pattern"].values()) == {12}
    assert len(scalings) == 2 * len(arch.names.linear_modules())
    assert set(scalings.values()) == {2.0}  # alpha / r = 2 on critical and other modules alike


def test_critical_lr_groups_match_only_the_critical_layers_adapters(small_model):
    arch = describe_architecture(small_model.config)
    peft_model = apply_method(small_model, arch, MethodConfig(name="lora", **rank_patterns(arch, [1], PAIR)))
    (pattern,) = critical_lr_groups(arch, [1], 1e-3)
    matched = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad and re.search(pattern, n))
    expected = sorted(
        n for n, p in peft_model.named_parameters() if p.requires_grad and ".layers.1." in n and ".lora_" in n
    )
    assert matched == expected and len(expected) == 2 * len(arch.names.linear_modules())


def test_matched_pair_follows_the_budget_formula():
    """Every layer of the tiny default has the same widths S, so LoRA r=16 costs 16 * 6 * S and
    CircuitLoRA (r_o, r_c) with one critical layer (r_c + 5 r_o) * S. Within 5% below 96 S and with
    r_c / r_o nearest 4, that is (10, 42): 92 S (r_o = 11 reaches 41 / 11, farther from 4)."""
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_BASE_DIR))
    arch = describe_architecture(meta.config)
    widths = module_widths(meta, arch)
    per_layer = sum(widths[name] for name in layer_modules(arch, 0))
    assert arch.layers == 6 and sum(widths.values()) == 6 * per_layer
    pair = matched_rank_pair(widths, arch, [3], r=16)
    assert pair == RankPair(10, 42)
    assert adapter_parameters(widths, arch, [3], pair) == 92 * per_layer
    assert uniform_parameters(widths, 16) == 96 * per_layer
    # two critical layers: 2 r_c + 4 r_o in [91.2, 96], ratio nearest 4 -> (8, 32): 96 S exactly
    assert matched_rank_pair(widths, arch, [0, 5], r=16) == RankPair(8, 32)
    assert PAPER_PAIRS["paper-8-32"] == RankPair(8, 32)


def test_bad_ranks_layers_and_budgets_are_refused():
    arch = describe_architecture(tiny_random("gpt2").config)
    widths = {name: 10 for layer in range(arch.layers) for name in layer_modules(arch, layer)}
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        RankPair(0, 4)
    with pytest.raises(ValueError, match="critical layers must be distinct layers in 0..1"):
        rank_patterns(arch, [2], PAIR)
    with pytest.raises(ValueError, match="critical layers must be distinct"):
        matched_rank_pair(widths, arch, [], r=8)
    with pytest.raises(ValueError, match="all 2 layers are critical"):
        matched_rank_pair(widths, arch, [0, 1], r=8)
    with pytest.raises(ValueError, match="no \\(r_o, r_c\\) .* matches uniform LoRA r=1"):
        matched_rank_pair(widths, arch, [0], r=1)  # no r_o below r: nothing to trade
    with pytest.raises(ValueError, match="LoRA rank r must be >= 1"):
        matched_rank_pair(widths, arch, [0], r=0)
