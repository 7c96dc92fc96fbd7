"""Swapping checkpoint weights into one loaded base model gives the same logits as loading each afresh."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.finetune.methods import apply_method
from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.loader import ModelSourceError, load_model
from ftcircuits.models.swap import CheckpointWeights


def trained_checkpoint(save_model, base_dir, out, method: MethodConfig):
    """Return a checkpoint directory whose weights differ from the base (a few random steps)."""
    loaded = load_model(str(base_dir))
    ids = loaded.tokenizer.convert_tokens_to_ids(method.trainable_tokens)
    model = apply_method(loaded.model, describe_architecture(loaded.model.config), method, 4, ids)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = torch.randint(5, 200, (4, 8))
    for _ in range(3):
        model(input_ids=batch).logits.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_model(model, out)


def logits(model, tokenizer):
    ids = torch.tensor([tokenizer("Calculate the result of 12 + 7 =")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "method",
    [
        MethodConfig(name="lora", r=4, trainable_tokens=["+", "="]),
        MethodConfig(name="ia3"),
        MethodConfig(name="fpft"),
    ],
    ids=["lora+tokens", "ia3", "fpft"],
)
def test_swapped_checkpoint_equals_a_fresh_load_and_base_comes_back(
    tmp_path, model_dir, save_model, tokenizer, method
):
    first = trained_checkpoint(save_model, model_dir, tmp_path / "first", method)
    second = trained_checkpoint(save_model, model_dir, tmp_path / "second", method)
    weights = CheckpointWeights(load_model(str(model_dir)))
    base_logits = logits(weights.model, tokenizer)
    model_before = weights.model
    for checkpoint in (first, second, first):  # swap back and forth: no drift from earlier merges
        weights.swap_to(checkpoint)
        expected = logits(load_model(str(checkpoint)).model, tokenizer)
        torch.testing.assert_close(logits(weights.model, tokenizer), expected)
        assert not torch.allclose(expected, base_logits)
        # a merged adapter leaves no parameter frozen (PEFT freezes them; eap-ig-activations needs them)
        assert all(param.requires_grad for param in weights.model.parameters())
    weights.swap_to("base")
    torch.testing.assert_close(logits(weights.model, tokenizer), base_logits)
    assert weights.model is model_before


def test_random_init_is_seeded_and_differs_from_the_base(model_dir, tokenizer):
    weights = CheckpointWeights(load_model(str(model_dir)))
    base_logits = logits(weights.model, tokenizer)
    weights.swap_to("random:3")
    random_logits = logits(weights.model, tokenizer)
    weights.swap_to("base")
    weights.swap_to("random:3")
    torch.testing.assert_close(logits(weights.model, tokenizer), random_logits)
    assert not torch.allclose(random_logits, base_logits)


def test_an_adapter_of_another_base_or_a_non_checkpoint_is_refused(
    tmp_path, model_dir, small_model, save_model
):
    other = save_model(small_model, tmp_path / "other")
    adapter = trained_checkpoint(save_model, other, tmp_path / "adapter", MethodConfig(name="lora", r=2))
    weights = CheckpointWeights(load_model(str(model_dir)))
    with pytest.raises(ModelSourceError, match="was trained on"):
        weights.swap_to(adapter)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="neither"):
        weights.swap_to(tmp_path / "empty")
