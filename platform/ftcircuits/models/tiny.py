"""The tiny offline model family: a small GPT-NeoX (Pythia architecture)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerBase


class TinyShape(BaseModel):
    """Shape of a tiny GPT-NeoX; the defaults are the shipped base model's."""

    model_config = ConfigDict(extra="forbid")

    layers: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    d_model: int = Field(128, ge=8)
    d_mlp: int = Field(512, ge=8)
    rotary_pct: float = Field(0.25, gt=0, le=1)
    max_positions: int = Field(128, ge=16)


def tiny_config(tokenizer: PreTrainedTokenizerBase, shape: TinyShape | None = None) -> GPTNeoXConfig:
    """Return the GPT-NeoX config of a tiny model sized for ``tokenizer``."""
    shape = shape or TinyShape()
    if shape.d_model % shape.heads:
        raise ValueError(f"d_model={shape.d_model} is not divisible by heads={shape.heads}")
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.d_model,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.d_mlp,
        hidden_act="gelu",
        rotary_pct=shape.rotary_pct,
        max_position_embeddings=shape.max_positions,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase, shape: TinyShape | None = None, seed: int = 0
) -> GPTNeoXForCausalLM:
    """Build a randomly initialised tiny GPT-NeoX, deterministic under ``seed``."""
    import torch

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(tiny_config(tokenizer, shape))
