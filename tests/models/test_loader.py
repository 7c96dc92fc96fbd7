"""One loader: round trips, the shipped tiny model, known shapes, architecture errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig
from transformers.utils import CONFIG_NAME

from ftcircuits.models import (
    ModelSourceError,
    UnsupportedArchitectureError,
    describe_architecture,
    load_model,
    resolve_model_source,
)
from ftcircuits.models.shapes import build_same_shape, known_shapes, layer_overrides, shape_config
from ftcircuits.paths import TINY_BASE_DIR


def test_save_and_load_round_trip_gives_identical_logits(model_dir, small_model, tokenizer):
    loaded = load_model(str(model_dir))
    ids = tokenizer(["72 plus 46 is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(small_model(ids).logits, loaded.model(ids).logits)
    assert loaded.architecture.family == "gpt_neox" and loaded.architecture.parallel_blocks
    assert loaded.architecture.layers == 2 and loaded.architecture.heads == 4


@pytest.mark.skipif(not (TINY_BASE_DIR / CONFIG_NAME).is_file(), reason="tiny base model not built")
def test_shipped_tiny_model_loads_with_its_tokenizer():
    loaded = load_model("tiny")
    arch = loaded.architecture
    assert (arch.layers, arch.heads, arch.d_model) == (6, 8, 128)
    assert arch.vocab == len(loaded.tokenizer)
    size = sum(p.stat().st_size for p in TINY_BASE_DIR.iterdir())
    assert size <= 10 * 2**20


EXPECTED = {
    "pythia-1.4b-deduped": ("gpt_neox", 24, 16, 16, 2048, True, 1.41e9),
    "gpt-neo-2.7B": ("gpt_neo", 32, 20, 20, 2560, False, 2.65e9),
    "opt-6.7b": ("opt", 32, 32, 32, 4096, False, 6.66e9),
    "gpt2": ("gpt2", 12, 12, 12, 768, False, 1.24e8),
    "tinyllama-1.1b": ("llama", 22, 32, 4, 2048, False, 1.1e9),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_shapes_build_offline_on_the_meta_device(name):
    family, layers, heads, kv, d_model, parallel, params = EXPECTED[name]
    model = build_same_shape(name, device="meta")
    arch = describe_architecture(model.config)
    assert (arch.family, arch.layers, arch.heads, arch.kv_heads, arch.d_model, arch.parallel_blocks) == (
        family,
        layers,
        heads,
        kv,
        d_model,
        parallel,
    )
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.02)
    modules = dict(model.named_modules())
    names = arch.names
    for template in (names.attention, names.attention_out, *names.qkv, *names.mlp_in, names.mlp_out):
        assert template.format(i=layers - 1) in modules
    for name_ in (names.final_norm, names.embed, names.unembed):
        assert name_ in modules


def test_lora_targets_are_each_layers_linear_modules():
    arch = describe_architecture(shape_config("pythia-1.4b-deduped"))
    assert arch.names.linear_modules() == (
        "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
    )  # fmt: skip
    llama = describe_architecture(shape_config("tinyllama-1.1b"))
    assert llama.names.linear_modules()[:3] == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def test_known_shapes_are_listed():
    assert set(EXPECTED) == set(known_shapes())


def test_same_shape_with_fewer_layers_runs_a_forward():
    model = build_same_shape(
        "tinyllama-1.1b",
        num_hidden_layers=1,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 100)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shape_cuts_to_its_first_layers(name, layers):
    config = shape_config(name, **layer_overrides(name, layers))
    assert describe_architecture(config).layers == layers
    if config.model_type == "gpt_neo":  # the alternating global/local pattern, cut with the layers
        assert config.attention_layers == ["global", "local", "global"][:layers]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ModelSourceError, match="not a readable directory"):
        resolve_model_source("./no/such/model")
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="unknown model shape"):
        resolve_model_source("shape:gpt5")
    assert resolve_model_source("EleutherAI/pythia-1.4b-deduped") == "EleutherAI/pythia-1.4b-deduped"


def test_post_norm_and_unknown_architectures_are_rejected():
    post_norm = shape_config("opt-6.7b", do_layer_norm_before=False)
    with pytest.raises(UnsupportedArchitectureError, match="post-norm"):
        describe_architecture(post_norm)
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'bert'"):
        describe_architecture(AutoConfig.for_model("bert"))
