"""One base model in memory, into which checkpoints' weights are swapped (no reload of the base).

A checkpoint is a directory written by fine-tuning: a PEFT adapter (merged onto
the base weights) or full weights in Hugging Face format. ``random:SEED`` swaps in
a fresh random initialisation of the same architecture, and ``base`` restores the
base weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import CONFIG_NAME

from ftcircuits.models.loader import ADAPTER_CONFIG, LoadedModel, ModelSourceError, resolve_model_source

BASE = "base"
RANDOM_PREFIX = "random:"


class CheckpointWeights:
    """Swaps weights into ``loaded.model`` in place; the model object and its modules stay the same."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.base_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
        self.current: str | None = BASE

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def swap_to(self, weights: str | Path) -> None:
        """Make the model hold ``weights``: ``base``, ``random:SEED`` or a checkpoint directory."""
        weights = str(weights)
        if weights == self.current:
            return
        model = self.loaded.model
        self.current = None  # until the swap completes
        model.load_state_dict(self.base_state)
        if weights.startswith(RANDOM_PREFIX):
            model.load_state_dict(self._random_state(int(weights.removeprefix(RANDOM_PREFIX))))
        elif weights != BASE:
            path = Path(weights)
            if (path / ADAPTER_CONFIG).is_file():
                self._merge_adapter(path)
            elif (path / CONFIG_NAME).is_file():
                full = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype)
                model.load_state_dict(full.state_dict())
            else:
                raise ModelSourceError(
                    f"checkpoint {weights!r} has neither {ADAPTER_CONFIG} nor {CONFIG_NAME}"
                )
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
        PeftModel.from_pretrained(self.loaded.model, str(path)).merge_and_unload()

    def _random_state(self, seed: int) -> dict[str, torch.Tensor]:
        model = self.loaded.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
        return fresh.state_dict()
