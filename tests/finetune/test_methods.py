"""Methods over PEFT: each wraps the tiny model, trains what it should, honours per-module ranks."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.architecture import describe_architecture


@pytest.mark.parametrize("name", ["fpft", "lora", "adalora", "ia3"])
def test_each_method_wraps_and_trains_parameters(small_model, name):
    arch = describe_architecture(small_model.config)
    total = sum(p.numel() for p in small_model.parameters())
    model = apply_method(small_model, arch, MethodConfig(name=name, r=2), total_steps=100)
    trainable = trainable_parameters(model)
    assert 0 < trainable <= total
    assert (trainable == total) is (name == "fpft")
    out = model(input_ids=torch.tensor([[2, 5, 6]])).logits
    assert out.shape[-1] == arch.vocab


def test_rank_pattern_gives_per_module_ranks(small_model):
    arch = describe_architecture(small_model.config)
    pattern = {r"^gpt_neox\.layers\.1\.attention\.query_key_value$": 6}
    model = apply_method(small_model, arch, MethodConfig(name="lora", r=2, rank_pattern=pattern))
    ranks = {n: m.r["default"] for n, m in model.named_modules() if hasattr(m, "lora_A") and m.r}
    assert ranks["base_model.model.gpt_neox.layers.1.attention.query_key_value"] == 6
    assert ranks["base_model.model.gpt_neox.layers.0.attention.query_key_value"] == 2


def test_trainable_tokens_update_only_their_embedding_rows(small_model, tokenizer):
    arch = describe_architecture(small_model.config)
    ids = tokenizer.convert_tokens_to_ids(["+", "="])
    before = small_model.gpt_neox.embed_in.weight.detach().clone()
    model = apply_method(small_model, arch, MethodConfig(name="lora", r=2), token_ids=ids)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    batch = torch.tensor([[2, ids[0], 7, ids[1], 9]])
    model(input_ids=batch).logits.sum().backward()
    optimizer.step()
    after = model.get_input_embeddings()(torch.arange(arch.vocab))
    changed = (after - before).abs().sum(-1) > 0
    assert changed[ids].all() and changed.sum() == len(ids)


# the first DeepSpeed engine of a fresh environment JIT-compiles its CPU shm comm op (a minute or more)
@pytest.mark.parametrize("engine", ["plain", pytest.param("deepspeed-zero0", marks=pytest.mark.slow)])
def test_adalora_really_reallocates_ranks_during_training(small_model, tokenizer, engine):
    from ftcircuits.encoding import prompt_ids, require_answer_ids
    from ftcircuits.finetune.deepspeed_strategy import DeepSpeedStrategy, single_process_environment
    from ftcircuits.finetune.loop import PlainStrategy, epoch_batches, train_answer_model
    from ftcircuits.finetune.schedule import TrainSettings
    from tests.conftest import free_port

    arch = describe_architecture(small_model.config)
    method = MethodConfig(name="adalora", r=2, adalora_init_r=6, adalora_tinit=2, adalora_tfinal=4,
                          adalora_delta_t=2)  # fmt: skip
    settings = TrainSettings(total_steps=16, lr=1e-2, warmup_steps=1)
    model = apply_method(small_model, arch, method, total_steps=settings.total_steps)

    assert not model.peft_config["default"].rank_pattern  # nothing reallocated yet
    prompts = [f"{n} then" for n in range(1, 33)]
    ids = prompt_ids(tokenizer, prompts)
    answers = require_answer_ids(tokenizer, prompts, [str(n + 1) for n in range(1, 33)])
    batches = epoch_batches(ids, answers, 8, 4, tokenizer.pad_token_id)
    if engine == "plain":
        strategy = PlainStrategy(model, settings)
    else:
        single_process_environment(port=free_port())
        strategy = DeepSpeedStrategy(model, settings, 8, zero_stage=0)
    train_answer_model(strategy, batches, settings)
    pattern = model.peft_config["default"].rank_pattern  # module -> kept ranks, written by reallocation
    kept = [sum(mask) for mask in pattern.values()]
    assert len(kept) == 4 * arch.layers and sum(kept) < 6 * len(kept)  # the ranks shrank ...
    assert len(set(kept)) > 1  # ... unevenly: ranks moved between modules
    for name, module in model.named_modules():
        if hasattr(module, "lora_E"):
            key = f"{name.removeprefix('base_model.model.')}.lora_E.default"
            assert int((module.lora_E["default"] != 0).sum()) <= sum(pattern[key])


def test_ia3_with_new_tokens_trains_the_input_embedding(small_model, tokenizer, tmp_path):
    """PEFT's IA3 has no trainable_token_indices: the whole embedding trains and is saved with the adapter."""
    arch = describe_architecture(small_model.config)
    ids = tokenizer.convert_tokens_to_ids(["+", "="])
    plain = apply_method(small_model, arch, MethodConfig(name="ia3"))
    ia3_only = trainable_parameters(plain)
    plain.unload()
    model = apply_method(small_model, arch, MethodConfig(name="ia3"), token_ids=ids)
    assert trainable_parameters(model) == ia3_only + small_model.gpt_neox.embed_in.weight.numel()
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("embed_in" in key for key in saved)
