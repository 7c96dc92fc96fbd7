"""Tiny random models of every supported architecture (float64), for exactness tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from ftcircuits.models.shapes import shape_config

VOCAB = 60
TINY_OVERRIDES = {
    "pythia-1.4b-deduped": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64),
    "gpt-neo-2.7B": dict(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        attention_types=[[["global", "local"], 1]],
        window_size=4,
        max_position_embeddings=64,
    ),
    "opt-6.7b": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        vocab_size=VOCAB,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    ),
    "tinyllama-1.1b": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    ),
}


def tiny_random(shape: str, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Return a 2-layer, 4-head, d_model 32 random model with ``shape``'s architecture, in eval mode."""
    torch.manual_seed(seed)
    config = shape_config(shape, **TINY_OVERRIDES[shape])
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():  # non-trivial norms and biases, so the tests see them
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()
