"""The training loop: loss on answer tokens only, and it learns."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.encoding import IGNORE_INDEX, accuracy, answer_batch, pad_prompts, prompt_ids
from ftcircuits.finetune.loop import answer_loss, decay_groups
from ftcircuits.finetune.plain import plain_finetune
from ftcircuits.finetune.schedule import TrainSettings, warmup_cosine
from ftcircuits.finetune.settings import PlainFinetuneConfig


def test_only_the_answer_position_is_labelled(tokenizer):
    ids = prompt_ids(tokenizer, ["1 plus 2 is", "10 minus 3 is 7 ."])
    batch = answer_batch(pad_prompts(ids, tokenizer.pad_token_id, "right"), torch.tensor([3, 4]))
    labelled = (batch.labels != IGNORE_INDEX).nonzero().tolist()
    assert labelled == [[0, len(ids[0]) - 1], [1, len(ids[1]) - 1]]


def test_loss_ignores_padding_content_and_side(tokenizer, small_model):
    ids = prompt_ids(tokenizer, ["1 plus 2 is", "100 minus 3 minus 4 is"])
    answers = torch.tensor(tokenizer.convert_tokens_to_ids(["3", "93"]))
    right = answer_loss(small_model, answer_batch(pad_prompts(ids, tokenizer.pad_token_id, "right"), answers))
    left = answer_loss(small_model, answer_batch(pad_prompts(ids, tokenizer.pad_token_id, "left"), answers))
    other_pad = answer_loss(small_model, answer_batch(pad_prompts(ids, 17, "right"), answers))
    torch.testing.assert_close(right, left, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(right, other_pad, rtol=1e-5, atol=1e-5)


def test_embeddings_norms_and_biases_are_not_decayed(small_model):
    decayed, plain = decay_groups(small_model, 0.1)
    names = {id(p): n for n, p in small_model.named_parameters()}
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in decayed["params"])
    assert any("embed_in" in names[id(p)] for p in plain["params"])


def test_lr_groups_give_matching_parameters_their_own_rate(tokenizer, small_model):
    from ftcircuits.finetune.loop import PlainStrategy

    groups = decay_groups(small_model, 0.1, {r"layers\.1\.": 1e-9})
    names = {id(p): n for n, p in small_model.named_parameters()}
    for group in groups:
        in_layer_1 = {".layers.1." in names[id(p)] for p in group["params"]}
        assert in_layer_1 == ({True} if "lr" in group else {False})
    assert sum(len(g["params"]) for g in groups) == len(list(small_model.parameters()))
    before = {n: p.detach().clone() for n, p in small_model.named_parameters()}
    settings = TrainSettings(total_steps=1, lr=1e-2, warmup_steps=0)
    strategy = PlainStrategy(small_model, settings, groups)
    ids = prompt_ids(tokenizer, ["1 then", "2 then"])
    strategy.micro_step(answer_batch(pad_prompts(ids, tokenizer.pad_token_id, "right"), torch.tensor([5, 6])))
    moved = {n: (p - before[n]).abs().max().item() for n, p in small_model.named_parameters()}
    assert max(v for n, v in moved.items() if ".layers.1." in n) < 1e-6
    assert max(v for n, v in moved.items() if ".layers.0." in n) > 1e-4


def test_an_lr_group_that_matches_nothing_is_an_error(small_model):
    with pytest.raises(ValueError, match=r"match no trainable parameter"):
        decay_groups(small_model, 0.1, {"lora_A": 1e-3})


def test_schedule_warms_up_then_decays():
    factor = warmup_cosine(TrainSettings(total_steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert factor(0) == 0.1 and factor(9) == 1.0
    assert factor(50) < 1.0 and abs(factor(100) - 0.1) < 1e-9
    assert factor(55) == pytest.approx(0.1 + 0.9 / 2)  # halfway through the decay: halfway down the cosine
    assert factor(150) == factor(100)  # past the end it stays at the floor


def test_plain_finetune_learns_a_mapping(tokenizer, small_model):
    prompts = [f"{n} then" for n in range(1, 60)]
    answers = [str(n + 1) for n in range(1, 60)]
    before = accuracy(small_model, tokenizer, prompts, answers)
    config = PlainFinetuneConfig(lr=1e-2, epochs=40, batch_size=16, warmup_steps=5, seed=0)
    losses = plain_finetune(small_model, tokenizer, prompts, answers, config)
    assert losses[-1] < 0.2 * losses[0]
    assert accuracy(small_model, tokenizer, prompts, answers) > max(0.8, before)
