"""Every option set of the project, declared once (a leaf: imports nothing of the project).

Schemas, functions and error messages use these aliases; ``choices(Alias)``
gives the allowed values in order, for validation and messages.

Vocabulary used across code, files and figures:
- **base**: the model before fine-tuning (a run's ``step-000000`` checkpoint holds it too);
- **budget**: a circuit's size as a share of the graph's edges (0.05 = 5%); an edge *count* is
  called ``edges``;
- **task**: a dataset task (Add/Sub, Mul/Div, ...) only; one circuit to discover over a run
  is a ``CircuitUnit``.
"""

from __future__ import annotations

from typing import Literal, get_args

Split = Literal["finetune", "circuit"]
CompositionalPart = Literal["full", "inner", "outer"]
PaddingSide = Literal["left", "right"]

FinetuneMethod = Literal["fpft", "lora", "adalora", "ia3"]
ZeroStage = Literal[0, 1, 2, 3]
Precision = Literal["fp32", "bf16", "fp16"]
Device = Literal["cpu", "cuda"]

# eap: one gradient at the clean input; clean-corrupted: the mean of the clean and corrupted gradients;
# eap-ig-inputs: integrated gradients along the input embeddings; eap-ig-activations: integrated gradients
# along each source group's own output (the input, a layer's heads, a layer's MLP); exact: each edge
# patched on its own (the metric's change: the ground truth the others approximate).
AttributionMethod = Literal["eap", "clean-corrupted", "eap-ig-inputs", "eap-ig-activations", "exact"]
# What replaces a source's output where an edge is scored or left out of a circuit: its output on the
# corrupted prompt (patching), zeros, or its mean over the discovery's items (one d-vector per source,
# over every real token: prompts of different lengths have no common positions).
Intervention = Literal["patching", "zero", "mean"]
# "k=1..m": alpha = k/m for k = 1..m (the paper-era reference: includes the clean input);
# "k=0..m-1": alpha = k/m for k = 0..m-1 (later reference versions: includes the corrupted input).
StepConvention = Literal["k=1..m", "k=0..m-1"]
Metric = Literal["kl", "kl_vocab_mean", "logit_diff", "prob"]
SelectionMethod = Literal["top", "greedy"]  # the top edges by |score|, or grown greedily from logits

NodeRule = Literal["union", "intersection"]  # merging circuits: which nodes
ScoreRule = Literal["mean", "max", "min"]  # merging circuits: the score of a shared edge
LayerVariant = Literal["source", "source_no_input", "destination"]  # which layer an edge's change counts for
CriticalRule = Literal["topk", "mean_std"]  # the k best layers, or those above mean + std
# CircuitLoRA: whose circuits give the critical layers: the task's own, or its subtasks' merged circuits.
CriticalSource = Literal["task", "compositional"]
# CircuitLoRA's (r_o, r_c): budget-matched to a uniform LoRA rank, a paper pair by name, or given.
RankChoice = Literal["matched", "paper-8-32", "paper-16-64", "explicit"]
SweepRanks = Literal["matched", "search"]  # a sweep draws r_c / r_o ratios (matched) or both ranks

# A robustness baseline of the base model's shape: a fresh random init (the architecture's init scale),
# random at the base weights' per-tensor mean and std, or the base weights permuted within each tensor.
Baseline = Literal["random-init", "random-scaled", "permuted", "briefly-trained"]
# What a circuit over a run is of: a checkpoint of the run, the base model, or a baseline of its shape.
ModelKind = Literal["checkpoint", "base", "random-init", "random-scaled", "permuted", "briefly-trained"]


def choices(alias) -> tuple:
    """Return the allowed values of a ``Literal`` alias, in declaration order."""
    return get_args(alias)


def check_choice(alias, value, what: str) -> None:
    """Raise ValueError naming ``what`` and the allowed values unless ``value`` is one of ``alias``."""
    allowed = choices(alias)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")
