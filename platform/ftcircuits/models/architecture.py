"""The one place that knows each architecture's shape and module names.

An ``Architecture`` describes a loaded model for the rest of the platform
(circuit graphs, LoRA targets, critical layers): nothing else branches on the
model type. Add an architecture by adding one ``ArchitectureAdapter``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is unknown or not supported (e.g. post-norm)."""


@dataclass(frozen=True)
class ModuleNames:
    """Dotted module names, with ``{i}`` for the layer index."""

    layer: str
    attention: str
    attention_out: str
    qkv: tuple[str, ...]
    mlp_in: tuple[str, ...]
    mlp_out: str
    final_norm: str
    embed: str
    unembed: str
    attention_norm: str
    mlp_norm: str
    qkv_layout: str = "separate"  # "interleaved" (GPT-NeoX [H,3,dh]), "blocks" ([3,H,dh]), "separate"
    conv1d: bool = False  # GPT-2's Conv1D stores weights as [in, out]
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    # the attention masks with its own causal buffer, indexed by the query count (GPT-Neo's local windows),
    # so it cannot run one query at a later position alone
    masks_by_query_count: bool = False

    def linear_modules(self) -> tuple[str, ...]:
        """Return each layer's linear module names relative to the layer (LoRA targets)."""
        prefix = self.layer + "."
        names = (*self.qkv, self.attention_out, *self.mlp_in, self.mlp_out)
        return tuple(dict.fromkeys(n.removeprefix(prefix) for n in names))


@dataclass(frozen=True)
class Architecture:
    """Shape and module names of one model."""

    family: str
    layers: int
    heads: int
    kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab: int
    parallel_blocks: bool
    names: ModuleNames


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Reads an ``Architecture`` off a Hugging Face config of one model type."""

    model_type: str
    names: ModuleNames

    def describe(self, config: PretrainedConfig) -> Architecture:
        heads = config.num_attention_heads
        d_model = config.hidden_size
        d_mlp = (
            getattr(config, "intermediate_size", None)
            or getattr(config, "ffn_dim", None)
            or getattr(config, "n_inner", None)
            or 4 * d_model
        )
        return Architecture(
            family=self.model_type,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            d_model=d_model,
            d_head=getattr(config, "head_dim", None) or d_model // heads,
            d_mlp=d_mlp,
            vocab=config.vocab_size,
            parallel_blocks=bool(getattr(config, "use_parallel_residual", False)),
            names=self.names,
        )


ADAPTERS: dict[str, ArchitectureAdapter] = {
    "gpt_neox": ArchitectureAdapter(
        "gpt_neox",
        ModuleNames(
            layer="gpt_neox.layers.{i}",
            attention="gpt_neox.layers.{i}.attention",
            attention_out="gpt_neox.layers.{i}.attention.dense",
            qkv=("gpt_neox.layers.{i}.attention.query_key_value",),
            mlp_in=("gpt_neox.layers.{i}.mlp.dense_h_to_4h",),
            mlp_out="gpt_neox.layers.{i}.mlp.dense_4h_to_h",
            final_norm="gpt_neox.final_layer_norm",
            embed="gpt_neox.embed_in",
            unembed="lm_head",
            attention_norm="gpt_neox.layers.{i}.input_layernorm",
            mlp_norm="gpt_neox.layers.{i}.post_attention_layernorm",
            qkv_layout="interleaved",
        ),
    ),
    "gpt2": ArchitectureAdapter(
        "gpt2",
        ModuleNames(
            layer="transformer.h.{i}",
            attention="transformer.h.{i}.attn",
            attention_out="transformer.h.{i}.attn.c_proj",
            qkv=("transformer.h.{i}.attn.c_attn",),
            mlp_in=("transformer.h.{i}.mlp.c_fc",),
            mlp_out="transformer.h.{i}.mlp.c_proj",
            final_norm="transformer.ln_f",
            embed="transformer.wte",
            unembed="lm_head",
            attention_norm="transformer.h.{i}.ln_1",
            mlp_norm="transformer.h.{i}.ln_2",
            qkv_layout="blocks",
            conv1d=True,
        ),
    ),
    "gpt_neo": ArchitectureAdapter(
        "gpt_neo",
        ModuleNames(
            layer="transformer.h.{i}",
            attention="transformer.h.{i}.attn.attention",
            attention_out="transformer.h.{i}.attn.attention.out_proj",
            qkv=tuple(f"transformer.h.{{i}}.attn.attention.{p}_proj" for p in "qkv"),
            mlp_in=("transformer.h.{i}.mlp.c_fc",),
            mlp_out="transformer.h.{i}.mlp.c_proj",
            final_norm="transformer.ln_f",
            embed="transformer.wte",
            unembed="lm_head",
            attention_norm="transformer.h.{i}.ln_1",
            mlp_norm="transformer.h.{i}.ln_2",
            masks_by_query_count=True,
        ),
    ),
    "opt": ArchitectureAdapter(
        "opt",
        ModuleNames(
            layer="model.decoder.layers.{i}",
            attention="model.decoder.layers.{i}.self_attn",
            attention_out="model.decoder.layers.{i}.self_attn.out_proj",
            qkv=tuple(f"model.decoder.layers.{{i}}.self_attn.{p}_proj" for p in "qkv"),
            mlp_in=("model.decoder.layers.{i}.fc1",),
            mlp_out="model.decoder.layers.{i}.fc2",
            final_norm="model.decoder.final_layer_norm",
            embed="model.decoder.embed_tokens",
            unembed="lm_head",
            attention_norm="model.decoder.layers.{i}.self_attn_layer_norm",
            mlp_norm="model.decoder.layers.{i}.final_layer_norm",
        ),
    ),
    "llama": ArchitectureAdapter(
        "llama",
        ModuleNames(
            layer="model.layers.{i}",
            attention="model.layers.{i}.self_attn",
            attention_out="model.layers.{i}.self_attn.o_proj",
            qkv=tuple(f"model.layers.{{i}}.self_attn.{p}_proj" for p in "qkv"),
            mlp_in=("model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj"),
            mlp_out="model.layers.{i}.mlp.down_proj",
            final_norm="model.norm",
            embed="model.embed_tokens",
            unembed="lm_head",
            attention_norm="model.layers.{i}.input_layernorm",
            mlp_norm="model.layers.{i}.post_attention_layernorm",
            norm="rmsnorm",
        ),
    ),
}


def describe_architecture(config: PretrainedConfig) -> Architecture:
    """Return the Architecture of ``config``; raise UnsupportedArchitectureError if unknown or post-norm."""
    adapter = ADAPTERS.get(config.model_type)
    if adapter is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {config.model_type!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    if config.model_type == "opt" and not getattr(config, "do_layer_norm_before", True):
        raise UnsupportedArchitectureError(
            "post-norm OPT (do_layer_norm_before=False, e.g. opt-350m) is not supported: "
            "circuit attribution needs pre-norm residual blocks"
        )
    return adapter.describe(config)
