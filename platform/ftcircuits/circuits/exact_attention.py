"""The attention side of exact patching's stacked copies (``circuits/exact.py``): the clean prefix's keys
and values held in per-layer buffers the copies share, and the last layer's attention run with one query per
copy.

Both work through the cache object a Hugging Face attention module updates with its keys and values, so they
need no per-architecture code: ``StackedLayer`` answers the update with a buffer that already holds the
prefix; ``last_query_only`` takes the keys and values of every position in a first call that it stops
there, then lets the attention run its one query at each copy's last position on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class StackedLayer(DynamicLayer):
    """A cache layer of stacked copies whose keys and values live in buffers that hold the prefix already:
    an update writes the new positions after it (no concatenation, no repeated prefix per pass)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.buffers, self.length = (keys, values), length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        for buffer, new in zip(self.buffers, (key_states, value_states), strict=True):
            buffer[:, :, self.length :].copy_(new)
        self.keys, self.values = self.buffers
        return self.buffers


@dataclass
class Prefix:
    """The positions every copy shares with the clean run, and the clean keys and values there."""

    length: int
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [B, kv heads, length, d_head]
    total: int  # positions in all
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # per layer

    def cache(self, from_layer: int, copies: int) -> DynamicCache:
        """Return a cache of the prefix, repeated ``copies`` times from ``from_layer`` on."""
        layers = []
        for layer, (k, v) in enumerate(self.keys_values):
            if layer < from_layer:
                layers.append(DynamicLayer())
                layers[-1].update(k, v)
            else:
                keys, values = self._buffers(layer, copies)
                layers.append(StackedLayer(keys, values, self.length))
        cache = DynamicCache()
        cache.layers = layers
        return cache

    def _buffers(self, layer: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``layer``'s key and value buffers of ``copies`` copies, the prefix filled in (one buffer
        per layer, grown when a pass needs more copies; a smaller pass uses its first rows)."""
        size = self.keys_values[layer][0].shape[0]
        held = self.buffers.get(layer)
        if held is None or held[0].shape[0] < copies * size:
            held = tuple(
                prefix.new_empty(copies * size, prefix.shape[1], self.total, prefix.shape[3])
                for prefix in self.keys_values[layer]
            )
            for buffer, prefix in zip(held, self.keys_values[layer], strict=True):
                buffer.view(copies, size, *buffer.shape[1:])[:, :, :, : self.length] = prefix
            self.buffers[layer] = held
        return held[0][: copies * size], held[1][: copies * size]


class _KeysValuesTaken(Exception):
    """Raised by ``_TakeKeysValues`` once the attention has computed its keys and values."""


class _TakeKeysValues:
    """A cache for one attention call: takes the keys and values (through ``cache``'s update, if any) and
    stops the call there (its queries, scores and output are not needed)."""

    def __init__(self, cache) -> None:
        self.cache, self.keys_values = cache, None

    def update(self, keys, values, *args, **kwargs):
        self.keys_values = (
            (keys, values) if self.cache is None else self.cache.update(keys, values, *args, **kwargs)
        )
        raise _KeysValuesTaken


class _GiveKeysValues:
    """A cache that answers an attention's update with keys and values taken before."""

    def __init__(self, keys_values) -> None:
        self.keys_values = keys_values

    def update(self, keys, values, *args, **kwargs):
        return self.keys_values


def last_query_only(module, args, kwargs, *, last: torch.Tensor):
    """A pre-hook of the last layer's attention: only each copy's last position reaches the logits, so the
    attention runs its one query there, on the keys and values of every position (taken by a first call
    that stops once it has them). Its output ``[E*B, 1, d]`` broadcasts over the positions in the residual
    sum, wrongly but harmlessly at the others."""
    kwargs = dict(kwargs)
    if args:
        kwargs["hidden_states"], args = args[0], args[1:]
    name = next(n for n in ("cache", "layer_past", "past_key_values") if n in kwargs)
    take = _TakeKeysValues(kwargs[name])
    try:
        module.forward(*args, **{**kwargs, name: take})
    except _KeysValuesTaken:
        pass
    if take.keys_values is None:  # the attention never asked its cache: leave the call as it is
        return None
    rows = torch.arange(len(last), device=last.device)

    def at_last(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 3 and value.shape[0] in (1, len(last)):
            return value.expand(len(last), *value.shape[1:])[rows, last][:, None]
        if isinstance(value, tuple | list):
            return type(value)(at_last(v) for v in value)
        return value

    mask = kwargs.get("attention_mask")
    if mask is not None:  # [N or 1, 1, queries, keys] -> each copy's last query's row
        kwargs["attention_mask"] = mask.expand(len(last), *mask.shape[1:])[rows, :, last][:, :, None]
    kwargs["hidden_states"] = at_last(kwargs["hidden_states"])
    if "position_embeddings" in kwargs:
        kwargs["position_embeddings"] = at_last(kwargs["position_embeddings"])
    if kwargs.get("position_ids") is not None:
        ids = kwargs["position_ids"]
        kwargs["position_ids"] = ids.expand(len(last), ids.shape[-1])[rows, last][:, None]
    kwargs[name] = _GiveKeysValues(take.keys_values)
    return args, kwargs
