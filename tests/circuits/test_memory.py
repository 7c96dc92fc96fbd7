"""Circuit memory: the buffer's size, batch_size auto, and the refusal of a batch that cannot fit."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.circuits import discover as discover_module
from ftcircuits.circuits import memory
from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.discover import discover_circuit
from ftcircuits.circuits.memory import BatchSizeError, circuit_batch, circuit_memory, difference_buffer_bytes
from ftcircuits.circuits.selection import Selection
from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.loader import load_model
from ftcircuits.models.shapes import build_same_shape
from ftcircuits.tasks import build_dataset, task_family

GIB = 2**30


def shape_arch(name: str):
    return describe_architecture(build_same_shape(name, device="meta").config)


def test_the_difference_buffer_is_sources_by_positions_by_width_in_the_model_dtype():
    pythia, opt = shape_arch("pythia-1.4b-deduped"), shape_arch("opt-6.7b")
    assert difference_buffer_bytes(pythia, 16, 24, torch.bfloat16) == 409 * 16 * 24 * 2048 * 2
    # opt-6.7b at batch 16: the 3.3 GiB the issue names
    assert difference_buffer_bytes(opt, 16, 24, torch.bfloat16) == 1057 * 16 * 24 * 4096 * 2
    assert difference_buffer_bytes(opt, 16, 24, torch.float32) == 2 * 1057 * 16 * 24 * 4096 * 2


def test_every_part_grows_linearly_with_the_batch():
    arch = shape_arch("tinyllama-1.1b")
    one, eight = (circuit_memory(arch, b, 24, 5, torch.bfloat16) for b in (1, 8))
    assert (eight.floor, eight.buffer, eight.evaluation) == (
        8 * one.floor,
        8 * one.buffer,
        8 * one.evaluation,
    )
    assert eight.attribution == int(memory.MEMORY_SLACK * (eight.floor + eight.buffer))


@pytest.mark.parametrize("free_gib", [24, 80])
def test_auto_picks_the_largest_batch_that_fits_the_free_memory(monkeypatch, free_gib):
    arch = shape_arch("opt-6.7b")
    monkeypatch.setattr(memory, "free_memory", lambda device: free_gib * GIB)
    choice = circuit_batch(arch, "auto", 24, 5, torch.bfloat16, "cpu", examples=10_000)
    usable = memory.FREE_MEMORY_SHARE * free_gib * GIB
    assert choice.available == int(usable)
    assert circuit_memory(arch, choice.batch, 24, 5, torch.bfloat16).peak <= usable
    assert circuit_memory(arch, choice.batch + 1, 24, 5, torch.bfloat16).peak > usable
    assert choice.describe().startswith(f"batch_size auto picked {choice.batch} (x 24 tokens, m = 5)")
    # never more than the examples there are
    assert circuit_batch(arch, "auto", 24, 5, torch.bfloat16, "cpu", examples=3).batch == 3


def test_an_explicit_batch_that_cannot_fit_is_refused_with_the_memory_it_needs(monkeypatch):
    arch = shape_arch("opt-6.7b")
    monkeypatch.setattr(memory, "free_memory", lambda device: 16 * GIB)  # 20.3 GiB needed
    need = circuit_memory(arch, 32, 24, 5, torch.bfloat16).peak
    with pytest.raises(
        BatchSizeError, match=rf"batch_size 32 does not fit cpu: .* need {need / GIB:.2f} GiB"
    ):
        circuit_batch(arch, 32, 24, 5, torch.bfloat16, "cpu", examples=256)
    with pytest.raises(BatchSizeError, match="not even one example"):
        monkeypatch.setattr(memory, "free_memory", lambda device: 1)
        circuit_batch(arch, "auto", 24, 5, torch.bfloat16, "cpu", examples=256)


@pytest.fixture()
def tiny_items(tokenizer):
    data, _ = build_dataset(task_family("addsub", range=100), tokenizer, 40, seed=0)
    return data.head(12)


def test_discovery_refuses_a_batch_that_cannot_fit_before_any_model_work(monkeypatch, tiny_items):
    loaded = load_model("tiny")
    monkeypatch.setattr(memory, "free_memory", lambda device: 2**20)

    def no_work(*args, **kwargs):
        raise AssertionError("attribution ran")

    monkeypatch.setattr(discover_module, "attribute_batch", no_work)
    with pytest.raises(BatchSizeError, match="batch_size 12 does not fit cpu"):
        discover_circuit(loaded, tiny_items, AttributionConfig(steps=2), Selection(budget=0.1), batch_size=32)


def test_discovery_with_auto_runs_at_the_batch_it_picked(monkeypatch, tiny_items):
    loaded = load_model("tiny")
    length = discover_module.longest_prompt(loaded.tokenizer, tiny_items)
    five = circuit_memory(loaded.architecture, 5, length, 2, torch.float32).peak
    monkeypatch.setattr(memory, "free_memory", lambda device: int((five + 1) / memory.FREE_MEMORY_SHARE) + 1)
    seen = []
    real = discover_module.attribute_batch
    monkeypatch.setattr(
        discover_module, "attribute_batch", lambda p, b, *c: seen.append(len(b.answers)) or real(p, b, *c)
    )
    found = discover_circuit(loaded, tiny_items, AttributionConfig(steps=2), Selection(budget=0.1), "auto")
    assert found.batch.batch == 5 and seen == [5, 5, 2]
    assert found.batch.describe().startswith(f"batch_size auto picked 5 (x {length} tokens, m = 2)")


def test_settings_take_a_number_or_auto_and_nothing_else():
    assert DiscoverySettings(batch_size="auto").batch_size == "auto"
    assert DiscoverySettings(batch_size=8).batch_size == 8
    for bad in ("big", 0):
        with pytest.raises(ValueError, match="batch_size"):
            DiscoverySettings(batch_size=bad)
