"""Known shapes of the study's models, shipped as config files for offline same-shape builds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"


def known_shapes() -> list[str]:
    """Return the names of the shipped shapes (e.g. "pythia-1.4b-deduped")."""
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def _shape_path(name: str) -> Path:
    path = SHAPES_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown model shape {name!r}; known: {', '.join(known_shapes())}")
    return path


def shape_for_hub_id(hub_id: str) -> str | None:
    """Return the name of the shipped shape of the model ``hub_id`` (e.g. "facebook/opt-6.7b" -> "opt-6.7b"),
    or None when no shape is shipped for it."""
    for name in known_shapes():
        if json.loads(_shape_path(name).read_text())["hub_id"] == hub_id:
            return name
    return None


def shape_config(name: str, **overrides) -> PretrainedConfig:
    """Return the Hugging Face config of shape ``name`` with ``overrides`` applied (e.g. fewer layers)."""
    fields = json.loads(_shape_path(name).read_text())
    fields.pop("hub_id")
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **{**fields, **overrides})


def build_same_shape(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    **overrides,
) -> PreTrainedModel:
    """Build a random-weight model of shape ``name``; ``device="meta"`` allocates nothing."""
    config = shape_config(name, **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def layer_overrides(name: str, layers: int) -> dict:
    """Return the config overrides that cut shape ``name`` to its first ``layers`` layers (GPT-Neo's
    alternating global/local attention pattern is cut with it)."""
    overrides: dict = {"num_hidden_layers": layers}
    if shape_config(name).model_type == "gpt_neo":
        pairs, odd = divmod(layers, 2)
        overrides["num_layers"] = layers
        overrides["attention_types"] = [[["global", "local"], pairs]] * bool(pairs) + [[["global"], 1]] * odd
    return overrides
