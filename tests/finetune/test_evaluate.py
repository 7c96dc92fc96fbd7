"""Accuracy: exact match of the next token after the prompt, under left and right padding."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutput

from ftcircuits.encoding import (
    AnswerTokenError,
    accuracy,
    correct_answers,
    pad_prompts,
    predicted_tokens,
    prompt_ids,
)


class SuccessorModel(torch.nn.Module):
    """A hand-built "model": at every real position it predicts the number one above the token there.

    Padding positions predict the pad token, so a probe that reads the wrong
    position gets a wrong answer.
    """

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.pad = tokenizer.pad_token_id
        self.tokenizer = tokenizer

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False):
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids.flatten().tolist())
        nxt = [
            self.tokenizer.convert_tokens_to_ids(str(int(t) + 1)) if t.isdigit() else self.pad for t in tokens
        ]
        target = torch.tensor(nxt).view_as(input_ids)
        target = torch.where(attention_mask.bool(), target, torch.full_like(target, self.pad))
        return CausalLMOutput(logits=torch.nn.functional.one_hot(target, self.vocab).float())


@pytest.mark.parametrize("side", ["left", "right"])
def test_hand_built_case_is_scored_exactly(tokenizer, side):
    model = SuccessorModel(tokenizer)
    prompts = ["count 1 2", "count 7", "please count 40 41 42", "count 9"]
    answers = ["3", "8", "43", "11"]
    hits = correct_answers(model, tokenizer, prompts, answers, batch_size=3, padding_side=side)
    assert hits == [True, True, True, False]
    assert accuracy(model, tokenizer, prompts, answers, padding_side=side) == 0.75


def test_left_and_right_padding_give_the_unpadded_predictions(tokenizer, small_model):
    prompts = ["Derive the following sequence: 1, 2, 3, 4,", "5 plus 6 is", "There is a function y=5x+75."]
    ids = prompt_ids(tokenizer, prompts)
    alone = [small_model(torch.tensor([row])).logits[0, -1].argmax().item() for row in ids]
    for side in ("left", "right"):
        batched = predicted_tokens(small_model, ids, tokenizer.pad_token_id, batch_size=8, padding_side=side)
        assert batched.tolist() == alone


def test_padding_puts_masks_positions_and_last_index_right():
    batch = pad_prompts([[5, 6, 7], [8]], pad_id=0, side="left")
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]] and batch.last_index.tolist() == [2, 2]
    batch = pad_prompts([[5, 6, 7], [8]], pad_id=0, side="right")
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]] and batch.last_index.tolist() == [2, 0]
    with pytest.raises(ValueError, match="padding side"):
        pad_prompts([[1]], 0, side="middle")


def test_multi_token_answer_is_rejected(tokenizer, small_model):
    with pytest.raises(AnswerTokenError, match="'12345'"):
        accuracy(small_model, tokenizer, ["1 plus 2 is"], ["12345"])
