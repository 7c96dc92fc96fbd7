"""Fine-tuning methods as configs over PEFT: FPFT, LoRA, AdaLoRA, IA3 (CircuitLoRA: per-module ranks).

A method is a ``finetune.settings.MethodConfig``. Target modules come from the architecture
adapter (``ModuleNames.linear_modules``), so no method branches on the model type. CircuitLoRA is
LoRA with ``rank_pattern`` / ``alpha_pattern`` (PEFT's) plus per-group learning rates
(``TrainConfig.lr_groups``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import AdaLoraConfig, IA3Config, LoraConfig, get_peft_model
from torch.utils.hooks import RemovableHandle

from ftcircuits.finetune.settings import MethodConfig
from ftcircuits.models.architecture import Architecture
from ftcircuits.models.loader import peft_wrapping


def target_modules(arch: Architecture) -> list[str]:
    """Return the per-layer linear modules every adapter method targets (suffix names)."""
    return list(arch.names.linear_modules())


def apply_method(
    model: torch.nn.Module,
    arch: Architecture,
    method: MethodConfig,
    total_steps: int | None = None,
    token_ids: list[int] = (),
) -> torch.nn.Module:
    """Return ``model`` ready to train under ``method`` (PEFT-wrapped unless FPFT).

    ``token_ids`` (the ids of ``method.trainable_tokens``) get trainable input
    embeddings, through PEFT's ``trainable_token_indices`` (LoRA, AdaLoRA) or, for IA3, which lacks
    it, the whole input embedding as a module to save.
    """
    if method.name == "fpft":
        return model
    targets = target_modules(arch)
    tokens = (
        {"trainable_token_indices": {arch.names.embed.rsplit(".", 1)[-1]: list(token_ids)}}
        if token_ids
        else {}
    )
    alpha = method.alpha or 2 * method.r
    if method.name == "lora":
        config = LoraConfig(
            r=method.r, lora_alpha=alpha, lora_dropout=method.dropout, target_modules=targets,
            rank_pattern=method.rank_pattern, alpha_pattern=method.alpha_pattern, bias="none", **tokens,
        )  # fmt: skip
    elif method.name == "adalora":
        if not total_steps:
            raise ValueError("AdaLoRA needs the total number of training steps")
        config = AdaLoraConfig(
            init_r=method.adalora_init_r, target_r=method.r, lora_alpha=alpha, target_modules=targets,
            tinit=method.adalora_tinit, tfinal=method.adalora_tfinal, deltaT=method.adalora_delta_t,
            total_step=total_steps, lora_dropout=method.dropout, **tokens,
        )  # fmt: skip
    else:  # ia3: scale attention projections and the MLP's output input
        mlp_out = arch.names.mlp_out.format(i=0).removeprefix(arch.names.layer.format(i=0) + ".")
        # PEFT's IA3 has no trainable_token_indices: with new tokens, the whole input embedding
        # trains (and is saved with the adapter), which its trainable-parameter count shows.
        embed = [arch.names.embed.rsplit(".", 1)[-1]] if token_ids else None
        config = IA3Config(target_modules=targets, feedforward_modules=[mlp_out], modules_to_save=embed)
    with peft_wrapping():
        return get_peft_model(model, config)


def check_schedule(method: MethodConfig, total_steps: int) -> None:
    """Raise ValueError when ``method``'s schedule does not fit a run of ``total_steps`` steps (AdaLoRA's
    warm-up ``tinit`` and final phase ``tfinal`` must leave steps to reallocate ranks in)."""
    if method.name == "adalora" and method.adalora_tinit >= total_steps - method.adalora_tfinal:
        raise ValueError(
            f"AdaLoRA's adalora_tinit {method.adalora_tinit} + adalora_tfinal {method.adalora_tfinal} leave "
            f"no rank-reallocation phase in a run of {total_steps} steps: lower them or train longer"
        )


def attach_rank_reallocation(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_of: Callable[[], int]
) -> RemovableHandle | None:
    """Make AdaLoRA reallocate its ranks after every optimiser step; None for other methods.

    PEFT's ``update_and_allocate`` reads the gradients, so it must run after the
    step and before they are zeroed: a post-step hook on the optimiser is that
    moment in the plain loop and in a DeepSpeed engine alike (ZeRO stage 0 only,
    where gradients stay on the parameters). ``step_of`` returns the global step
    just taken (1-based), so a resumed run keeps AdaLoRA's schedule.
    """
    update = getattr(getattr(model, "base_model", None), "update_and_allocate", None)
    if update is None:
        return None
    return optimizer.register_step_post_hook(lambda *_: update(step_of()))


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
