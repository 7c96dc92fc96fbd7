"""Forward hooks on a model's modules, registered and removed by one context manager."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

Hook = tuple[torch.nn.Module, Callable]


@contextmanager
def module_hooks(
    forward: Iterable[Hook] = (), pre: Iterable[Hook] = (), pre_kwargs: Iterable[Hook] = ()
) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks and forward pre-hooks for the ``with`` block only.

    ``pre_kwargs`` hooks are pre-hooks that see and may replace the keyword arguments too:
    ``hook(module, args, kwargs) -> (args, kwargs) | None``.

    Every hook is removed on leaving the block, also when it raises, so a model
    is never left hooked.
    """
    handles = []
    try:
        for module, hook in pre_kwargs:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
