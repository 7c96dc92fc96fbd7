"""One base model in memory, into which checkpoints' weights are swapped (no reload of the base).

A checkpoint is a directory written by fine-tuning: a PEFT adapter (merged onto
the base weights) or full weights in Hugging Face format. ``base`` restores the
base weights. Baselines of the same shape:

- ``random:SEED``: a fresh random initialisation of the architecture (its init scale);
- ``random-scaled:SEED``: every parameter tensor drawn from a normal with the base tensor's own mean
  and std (random, but at the pre-trained weights' per-tensor scale);
- ``permuted:SEED``: every parameter tensor's base values shuffled within the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import CONFIG_NAME

from ftcircuits.models.loader import (
    ADAPTER_CONFIG,
    LoadedModel,
    ModelSourceError,
    check_model_files,
    peft_wrapping,
    resolve_model_source,
)

BASE = "base"
RANDOM_PREFIX = "random:"
SCALED_PREFIX = "random-scaled:"
PERMUTED_PREFIX = "permuted:"


class CheckpointWeights:
    """Swaps weights into ``loaded.model`` in place; the model object and its modules stay the same."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.base_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
        # merging an adapter freezes every parameter (PEFT); gradient-based scores that start inside the
        # model (eap-ig-activations) need the loaded model's flags back
        self.requires_grad = {name: p.requires_grad for name, p in loaded.model.named_parameters()}
        self.current: str | None = BASE

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def swap_to(self, weights: str | Path) -> None:
        """Make the model hold ``weights``: ``base``, ``random:SEED`` or a checkpoint directory (its files
        checked first: DamagedFileError names a damaged one)."""
        weights = str(weights)
        if weights == self.current:
            return
        model = self.loaded.model
        self.current = None  # until the swap completes
        model.load_state_dict(self.base_state)
        if weights.startswith(RANDOM_PREFIX):
            model.load_state_dict(self._random_state(int(weights.removeprefix(RANDOM_PREFIX))))
        elif weights.startswith((SCALED_PREFIX, PERMUTED_PREFIX)):
            prefix = SCALED_PREFIX if weights.startswith(SCALED_PREFIX) else PERMUTED_PREFIX
            self._redraw_parameters(int(weights.removeprefix(prefix)), permute=prefix == PERMUTED_PREFIX)
        elif weights != BASE:
            path = Path(weights)
            if (path / ADAPTER_CONFIG).is_file():
                check_model_files(path)
                self._merge_adapter(path)
            elif (path / CONFIG_NAME).is_file():
                check_model_files(path)
                full = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype)
                model.load_state_dict(full.state_dict())
            else:
                raise ModelSourceError(
                    f"checkpoint {weights!r} has neither {ADAPTER_CONFIG} nor {CONFIG_NAME}"
                )
        for name, param in model.named_parameters():
            param.requires_grad_(self.requires_grad[name])
        model.eval()
        self.current = weights

    def _merge_adapter(self, path: Path) -> None:
        from peft import PeftModel

        declared = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        if resolve_model_source(declared) != self.loaded.source:
            raise ModelSourceError(
                f"adapter {str(path)!r} was trained on {declared!r}, "
                f"not on the loaded base {self.loaded.source!r}"
            )
        # merge_and_unload writes the merged weights into the wrapped modules and puts them back
        with peft_wrapping():
            PeftModel.from_pretrained(self.loaded.model, str(path)).merge_and_unload()

    def _random_state(self, seed: int) -> dict[str, torch.Tensor]:
        model = self.loaded.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
        return fresh.state_dict()

    @torch.no_grad()
    def _redraw_parameters(self, seed: int, permute: bool) -> None:
        """Replace every parameter (not buffers) from the base values: shuffled within the tensor, or drawn
        from a normal with the tensor's mean and std (a one-element tensor keeps its value)."""
        generator = torch.Generator().manual_seed(seed)
        for _, param in sorted(self.loaded.model.named_parameters()):  # tied weights are listed once
            base = param.detach().float().cpu().flatten()
            if base.numel() < 2:
                continue
            if permute:
                drawn = base[torch.randperm(base.numel(), generator=generator)]
            else:
                drawn = torch.randn(base.numel(), generator=generator) * base.std() + base.mean()
            param.copy_(drawn.view(param.shape).to(param.dtype))
