"""Per-head weight views reproduce each architecture's own projections."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.heads import out_projection_heads, qkv_projections
from tests.circuits.tiny_models import TINY_OVERRIDES, tiny_random


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
def test_per_head_qkv_weights_reproduce_the_module_output(shape):
    model = tiny_random(shape)
    arch = describe_architecture(model.config)
    x = torch.randn(2, 5, arch.d_model, dtype=torch.float64)
    for projection in qkv_projections(model, arch, layer=1):
        out = projection.module(x)
        per_head = torch.einsum("phkd,btd->btphk", projection.weight(), x)
        if projection.bias() is not None:
            per_head = per_head + projection.bias()
        torch.testing.assert_close(projection.split_output(out), per_head)
        torch.testing.assert_close(projection.merge_output(per_head), out)


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
def test_heads_sum_to_the_output_projection(shape):
    model = tiny_random(shape)
    arch = describe_architecture(model.config)
    module = dict(model.named_modules())[arch.names.attention_out.format(i=0)]
    z = torch.randn(2, 5, arch.heads * arch.d_head, dtype=torch.float64)
    heads = torch.einsum("hkd,bthk->bthd", out_projection_heads(model, arch, 0), z.view(2, 5, arch.heads, -1))
    bias = module.bias if module.bias is not None else 0
    torch.testing.assert_close(heads.sum(dim=2) + bias, module(z))
