"""The same loop under real DeepSpeed in one CPU process: every ZeRO stage trains exactly as the
plain loop, and a ZeRO-3 checkpoint reloads to the same logits."""

from __future__ import annotations

import copy

import pytest
import torch

from ftcircuits.encoding import prompt_ids, require_answer_ids
from ftcircuits.finetune.deepspeed_strategy import (
    DeepSpeedStrategy,
    deepspeed_config,
    single_process_environment,
)
from ftcircuits.finetune.loop import PlainStrategy, epoch_batches, train_answer_model
from ftcircuits.finetune.schedule import TrainSettings
from ftcircuits.models.loader import load_model
from tests.conftest import free_port

PROMPTS = [f"{n} then" for n in range(1, 41)]
ANSWERS = [str(n + 1) for n in range(1, 41)]


@pytest.fixture(scope="module", autouse=True)
def process_group():
    single_process_environment(port=free_port())


def batches(tokenizer, epochs: int):
    ids = prompt_ids(tokenizer, PROMPTS)
    answers = require_answer_ids(tokenizer, PROMPTS, ANSWERS)
    return epoch_batches(ids, answers, 8, epochs, tokenizer.pad_token_id, seed=0)


@pytest.mark.slow  # three DeepSpeed trainings and their plain twins: ~1 s each idle, 15-30 s on busy CPUs
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_every_zero_stage_trains_exactly_as_the_plain_loop(tokenizer, small_model, stage):
    settings = TrainSettings(total_steps=20, lr=1e-2, warmup_steps=2, grad_accumulation=2)
    twin = copy.deepcopy(small_model)
    plain = train_answer_model(PlainStrategy(small_model, settings), batches(tokenizer, 8), settings)
    strategy = DeepSpeedStrategy(twin, settings, 8, zero_stage=stage)
    deep = train_answer_model(strategy, batches(tokenizer, 8), settings)
    assert deep == pytest.approx(plain, rel=1e-4)
    assert deep[-1] < 0.6 * deep[0]


@pytest.mark.slow  # a fresh environment's first DeepSpeed engine JIT-compiles a CPU comm op: a minute+
def test_zero3_checkpoint_reloads_to_the_same_logits(tmp_path, tokenizer, small_model, save_model):
    settings = TrainSettings(total_steps=3, lr=1e-2, warmup_steps=1)
    strategy = DeepSpeedStrategy(small_model, settings, 8, zero_stage=3)
    train_answer_model(strategy, batches(tokenizer, 1), settings)
    save_model(strategy, tmp_path)  # the engine's (ZeRO-3 partitioned) weights, gathered
    ids = torch.tensor([tokenizer("Derive the following sequence: 1, 2, 3, 4,")["input_ids"]])
    with torch.no_grad():
        expected = strategy.engine(input_ids=ids).logits
        reloaded = load_model(str(tmp_path)).model(input_ids=ids).logits
    torch.testing.assert_close(reloaded, expected)


def test_bad_settings_are_rejected_before_deepspeed_starts(small_model):
    with pytest.raises(ValueError, match="ZeRO stage"):
        deepspeed_config(TrainSettings(total_steps=1), 8, zero_stage=4, precision="fp32")
    with pytest.raises(ValueError, match="needs a GPU"):
        DeepSpeedStrategy(small_model, TrainSettings(total_steps=1), 8, precision="bf16")
