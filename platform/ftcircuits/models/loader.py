"""One loader: the shipped tiny model, a local path, a hub id, or a known shape with random weights."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import CONFIG_NAME

from ftcircuits.integrity import DamagedFileError, check_safetensors, read_json_with_keys
from ftcircuits.models.architecture import Architecture, describe_architecture
from ftcircuits.models.shapes import build_same_shape, known_shapes
from ftcircuits.paths import TINY_BASE_DIR

TINY = "tiny"
SHAPE_PREFIX = "shape:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSourceError(ValueError):
    """A model source is neither the tiny model, a readable model directory, a known shape nor a hub id."""


@dataclass
class LoadedModel:
    """A model, its tokenizer (None for a bare shape) and its architecture description."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    architecture: Architecture
    source: str


def resolve_model_source(source: str) -> str:
    """Return a canonical source: a model directory, ``shape:NAME`` or a hub id.

    Raises ModelSourceError, naming the source, for a missing or unreadable
    path or an unknown shape, before anything is loaded.
    """
    if source == TINY:
        source = str(TINY_BASE_DIR)
    if source.startswith(SHAPE_PREFIX):
        name = source.removeprefix(SHAPE_PREFIX)
        if name not in known_shapes():
            raise ModelSourceError(f"unknown model shape {name!r}; known: {', '.join(known_shapes())}")
        return source
    path = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or path.exists() or not _HUB_ID.match(source)
    if looks_like_path:
        if not path.is_dir():
            raise ModelSourceError(f"model path {source!r} is not a readable directory")
        if not (path / CONFIG_NAME).is_file() and not (path / ADAPTER_CONFIG).is_file():
            raise ModelSourceError(
                f"model path {source!r} has no config.json or {ADAPTER_CONFIG} (not a Hugging Face model)"
            )
        return str(path.resolve())
    return source


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_KEYS = ("peft_type", "base_model_name_or_path")  # PEFT's class of adapter; the base it was trained on
CONFIG_KEYS = ("model_type",)  # what transformers' Auto classes dispatch on
WEIGHTS_INDEX_SUFFIX = ".safetensors.index.json"  # a sharded model's map of tensors to shard files


def model_rebuild(directory: Path) -> str:
    """Return how a model directory's files are rebuilt: a fine-tuning run's checkpoint by its run, the
    shipped tiny model by git or its pre-training job, any other directory by saving it again."""
    from ftcircuits.run_layout import CHECKPOINTS_DIR, finetune_rebuild, run_config_path  # polars: not at top

    directory = Path(directory)
    run = directory.parent.parent
    if directory.parent.name == CHECKPOINTS_DIR and run_config_path(run).is_file():
        return finetune_rebuild(run)
    if directory.resolve() == TINY_BASE_DIR.resolve():
        return f"git checkout -- {TINY_BASE_DIR}, or python -m jobs.pretrain_tiny --out {TINY_BASE_DIR}"
    return f"save or download the model into {directory} again"


def check_model_files(directory: Path, rebuild: str | None = None) -> None:
    """Check a model directory's files before its weights are loaded, reading no tensor: its
    ``adapter_config.json`` (an adapter: the keys PEFT needs) or ``config.json`` (full weights), and every
    safetensors file of its weights (``integrity.check_safetensors``: the header against the file's size).

    Raises DamagedFileError naming the first damaged or missing file, with ``rebuild`` (default:
    ``model_rebuild``); a directory of pickled ``.bin`` weights has only its config checked.
    """
    directory = Path(directory)
    rebuild = rebuild or model_rebuild(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        read_json_with_keys(directory / ADAPTER_CONFIG, rebuild, ADAPTER_KEYS)
        stem = "adapter_model"
    elif (directory / CONFIG_NAME).is_file():
        read_json_with_keys(directory / CONFIG_NAME, rebuild, CONFIG_KEYS)
        stem = "model"
    else:
        raise DamagedFileError(directory, f"holds neither {ADAPTER_CONFIG} nor {CONFIG_NAME}", rebuild)
    shards = directory / f"{stem}{WEIGHTS_INDEX_SUFFIX}"
    if shards.is_file():
        weight_map = read_json_with_keys(shards, rebuild, ("weight_map",))["weight_map"]
        files = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else None
        if not files:
            raise DamagedFileError(shards, "wrong schema: its weight_map names no shard file", rebuild)
    elif (directory / f"{stem}.safetensors").is_file() or not list(directory.glob(f"*{stem}*.bin")):
        files = [f"{stem}.safetensors"]  # checked even when missing: then it is named
    else:
        files = []
    for name in files:
        check_safetensors(directory / name, rebuild)


PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
"""transformers 5's FutureWarning at PEFT's every wrapping of a model: PEFT reads the deprecated property
(``peft_model.py``: ``getattr(model, "is_gradient_checkpointing", True)``); ours has nothing to change."""


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Wrap a model in PEFT (``get_peft_model``, ``PeftModel.from_pretrained``) inside: without the
    FutureWarning PEFT's own call raises (PEFT_DEPRECATION), once per process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        yield


def _merged_adapter(path: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    """Load a PEFT adapter directory onto its base model and merge it (a plain model again)."""
    import json

    from peft import PeftModel

    base_source = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base_source = resolve_model_source(base_source)
    if Path(base_source).is_dir():
        check_model_files(Path(base_source))
    base = AutoModelForCausalLM.from_pretrained(base_source, dtype=dtype)
    with peft_wrapping():
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def model_skeleton(source: str) -> tuple[PreTrainedModel, Architecture]:
    """Return ``source``'s model on the meta device (shapes, no weights read) and its architecture.

    An adapter directory gives its base model's skeleton.
    """
    import json

    resolved = resolve_model_source(source)
    if resolved.startswith(SHAPE_PREFIX):
        model = build_same_shape(resolved.removeprefix(SHAPE_PREFIX), device="meta")
        return model, describe_architecture(model.config)
    if (Path(resolved) / ADAPTER_CONFIG).is_file():
        base = json.loads((Path(resolved) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        resolved = resolve_model_source(base)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except OSError as error:
        raise ModelSourceError(f"cannot read the config of model {source!r}: {error}") from error
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model, describe_architecture(model.config)


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of ``source`` (a pad token is set if the model has none)."""
    resolved = resolve_model_source(source)
    if resolved.startswith(SHAPE_PREFIX):
        raise ModelSourceError(f"{source!r} is a bare shape with random weights and has no tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise ModelSourceError(f"cannot load the tokenizer of {source!r}: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model by ``source`` ("tiny", a directory, a hub id, or ``shape:NAME``), in eval mode."""
    resolved = resolve_model_source(source)
    if resolved.startswith(SHAPE_PREFIX):
        model = build_same_shape(resolved.removeprefix(SHAPE_PREFIX), device=device, dtype=dtype)
        return LoadedModel(model, None, describe_architecture(model.config), resolved)
    if Path(resolved).is_dir():
        check_model_files(Path(resolved))
    tokenizer = load_tokenizer(resolved)
    try:
        if (Path(resolved) / ADAPTER_CONFIG).is_file():
            model = _merged_adapter(Path(resolved), dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
    except OSError as error:
        raise ModelSourceError(f"cannot load model {source!r}: {error}") from error
    model = model.to(device)
    return LoadedModel(model.eval(), tokenizer, describe_architecture(model.config), resolved)
