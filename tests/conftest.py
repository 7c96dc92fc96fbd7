"""Shared fixtures: the tiny tokenizer and small random tiny models (no network)."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.models.tiny import TinyShape, build_tiny_model
from ftcircuits.models.tokenizer import build_tiny_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer(1000)


@pytest.fixture(scope="session")
def small_shape() -> TinyShape:
    return TinyShape(layers=2, heads=4, d_model=32, d_mlp=64)


@pytest.fixture()
def small_model(tokenizer, small_shape):
    return build_tiny_model(tokenizer, small_shape, seed=0).eval()
