"""CircuitLoRA's planning stage (Algorithm 1): from a reference run's circuits to a LoRA config.

The base and final circuits of the reference run (a fine-tuning run, usually plain LoRA) give each edge's
change; the changes are summed per layer under a layer-score variant; the critical layers get the higher
rank. The plan (layers, scores, ranks, the LoRA fields, both parameter counts: ``params`` and
``matched_params``) is plain data, written to the run directory before the CircuitLoRA fine-tune starts, so
a rerun reads it instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from ftcircuits.circuits.compare import critical_layers, edge_changes, layer_scores
from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.discovery import CompositionalConfig
from ftcircuits.finetune.circuitlora import (
    PAPER_PAIRS,
    RankPair,
    adapter_parameters,
    critical_lr_groups,
    matched_rank_pair,
    module_widths,
    rank_patterns,
    uniform_parameters,
)
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.architecture import Architecture
from ftcircuits.models.loader import model_skeleton
from ftcircuits.options import LayerVariant, choices
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import DATA_DIR, read_checkpoint_index
from ftcircuits.study.compositional import merged_subtask_circuit
from ftcircuits.study.dynamics import checkpoint_circuits, read_summary

PLAN_FILE = "circuitlora.json"


@dataclass(frozen=True)
class CircuitLoraPlan:
    """What Algorithm 1 chose, and the LoRA fields and learning-rate groups that carry it out."""

    reference_run: str
    circuits: str
    source: str  # the task's own circuits, or its merged subtask circuits (compositional)
    variant: str
    rule: str
    k: int
    layer_scores: list[float]
    critical_layers: list[int]
    ranks: dict  # {"other": r_o, "critical": r_c}
    lora_fields: dict  # r, alpha, rank_pattern, alpha_pattern
    lr_groups: dict[str, float]
    by_variant: dict  # every layer-score variant's scores and critical layers under the same rule and k
    params: int  # CircuitLoRA's adapter parameters
    matched_params: int  # uniform LoRA's at ranks.lora_r, the parameter count CircuitLoRA is matched to
    model_parameters: int


def reference_circuits(circuits_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return the (base, final) checkpoint circuits of a reference run's circuits directory."""
    circuits = checkpoint_circuits(circuits_dir, read_summary(circuits_dir))
    return circuits[0][1], circuits[-1][1]


def merged_reference_circuits(
    config: CircuitLoraConfig, reference_run: Path, circuits_dir: Path
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return the merged subtask circuits (compositional inner + outer) of the reference run's base and
    final checkpoints, discovered with its circuits' discovery settings and cached in
    ``<circuits>/compositional``."""
    index = read_checkpoint_index(reference_run)
    merged = []
    for name, checkpoint in (("base", index["path"][0]), ("final", index["path"][-1])):
        settings = CompositionalConfig(
            model=checkpoint, data=Path(reference_run) / DATA_DIR,
            discovery=config.circuits.discovery.model_copy(update={"curve": False}),
            out=Path(circuits_dir) / "compositional" / name,
        )  # fmt: skip
        merged.append(merged_subtask_circuit(settings))
    return merged[0], merged[1]


def choose_critical_layers(
    before: pl.DataFrame, after: pl.DataFrame, layers: int, config: CircuitLoraConfig
) -> tuple[pl.DataFrame, list[int], int]:
    """Return the layer scores, the critical layers and k under the config's variant and rule."""
    rule = config.critical
    k = rule.k_for(layers)
    scores = layer_scores(edge_changes(before, after), layers, rule.variant)
    chosen = critical_layers(scores, rule.rule, k)
    if not chosen:
        raise ValueError(f"rule {rule.rule!r} marks no layer critical (variant {rule.variant!r})")
    if len(chosen) == layers:
        raise ValueError(f"rule {rule.rule!r} marks every layer critical: CircuitLoRA would be plain LoRA")
    return scores, chosen, k


def critical_layers_by_variant(
    before: pl.DataFrame, after: pl.DataFrame, layers: int, config: CircuitLoraConfig
) -> dict[str, dict]:
    """Return, for every layer-score variant, its layer scores and critical layers under the config's
    rule and k (empty where the rule marks no layer or every layer): how much the choice depends on it."""
    out = {}
    for variant in choices(LayerVariant):
        rule = config.critical.model_copy(update={"variant": variant})
        try:
            table, chosen, _ = choose_critical_layers(
                before, after, layers, config.model_copy(update={"critical": rule})
            )
        except ValueError:
            table, chosen = layer_scores(edge_changes(before, after), layers, variant), []
        out[variant] = {"scores": table["score"].to_list(), "critical_layers": chosen}
    return out


def rank_pair(config: CircuitLoraConfig, widths: dict, arch: Architecture, critical: list[int]) -> RankPair:
    """Return (r_o, r_c) as the config asks: matched to uniform LoRA's parameter count, a paper pair by
    name, or given."""
    ranks = config.ranks
    if ranks.choice == "matched":
        return matched_rank_pair(widths, arch, critical, ranks.lora_r, ranks.ratio)
    if ranks.choice == "explicit":
        return RankPair(ranks.other, ranks.critical)
    return PAPER_PAIRS[ranks.choice]


def shape_widths(base_model: str) -> tuple[Architecture, dict[str, int], int]:
    """Return the architecture, LoRA module widths and parameter count of a model (no weights read)."""
    model, arch = model_skeleton(base_model)
    return arch, module_widths(model, arch), sum(p.numel() for p in model.parameters())


def check_plannable(
    preset: FinetuneConfig,
    preset_path: Path,
    ks: Sequence[int],
    ratios: Sequence[float],
    lora_r: int,
    k_name: str = "critical k",
) -> Architecture:
    """Refuse, before any work, what no plan could carry out: a preset that is not LoRA, a k the model
    cannot have, and a parameter-matched pair that no (k, ratio) can meet (``ratios`` empty: ranks are
    not matched). Return the preset model's architecture."""
    check_lora_preset(preset, preset_path)
    arch, widths, _ = shape_widths(preset.model)
    too_deep = [k for k in ks if k >= arch.layers]
    if too_deep:
        raise ValueError(f"{k_name} {too_deep} must be below the model's {arch.layers} layers")
    for k in ks:  # every layer has the same widths: any k layers tell
        for ratio in ratios:
            matched_rank_pair(widths, arch, list(range(k)), lora_r, ratio)
    return arch


def plan_circuitlora(
    config: CircuitLoraConfig, base_model: str, reference_run: Path, circuits_dir: Path
) -> CircuitLoraPlan:
    """Run Algorithm 1 on the reference run's base and final circuits; return the plan (nothing trains
    here)."""
    arch, widths, total = shape_widths(base_model)
    if config.critical.source == "compositional":
        before, after = merged_reference_circuits(config, reference_run, circuits_dir)
    else:
        before, after = reference_circuits(circuits_dir)
    scores, chosen, k = choose_critical_layers(before, after, arch.layers, config)
    pair = rank_pair(config, widths, arch, chosen)
    return CircuitLoraPlan(
        reference_run=str(reference_run), circuits=str(circuits_dir), source=config.critical.source,
        variant=config.critical.variant,
        rule=config.critical.rule, k=k, layer_scores=scores["score"].to_list(), critical_layers=chosen,
        by_variant=critical_layers_by_variant(before, after, arch.layers, config), ranks=asdict(pair),
        lora_fields=rank_patterns(arch, chosen, pair, config.ranks.alpha_ratio),
        lr_groups=critical_lr_groups(arch, chosen, config.lr_critical),
        params=adapter_parameters(widths, arch, chosen, pair),
        matched_params=uniform_parameters(widths, config.ranks.lora_r), model_parameters=total,
    )  # fmt: skip


def check_lora_preset(preset: FinetuneConfig, path: Path) -> None:
    """Raise ValueError unless the CircuitLoRA run's preset is a LoRA method."""
    if preset.method.name != "lora":
        raise ValueError(f"CircuitLoRA needs a LoRA preset; {path} has method {preset.method.name!r}")


def circuitlora_finetune_config(
    preset: FinetuneConfig, plan: CircuitLoraPlan, config: CircuitLoraConfig
) -> FinetuneConfig:
    """Return the preset with CircuitLoRA's method and learning rates, run in ``<out>/finetune-<hash>``:
    another plan (other layers, ranks or rates) gets its own run, the same plan resumes or is done."""
    check_lora_preset(preset, config.finetune_config)
    method = preset.method.model_copy(update=plan.lora_fields)
    train = preset.train.model_copy(update={"lr": config.lr_other, "lr_groups": plan.lr_groups})
    tuned = preset.model_copy(update={"method": method, "train": train})
    key = hashlib.sha256(json.dumps(tuned.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:10]
    return tuned.model_copy(update={"out": Path(config.out) / f"finetune-{key}"})


def write_plan(out: Path, plan: CircuitLoraPlan) -> Path:
    path = Path(out) / PLAN_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(asdict(plan), indent=1))
    return path
