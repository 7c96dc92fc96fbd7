"""Validated config schemas (one per job), loaded from YAML with dotted overrides.

Every error (unknown field, wrong type, unknown task, bad range, unreadable
model path) is raised as one ConfigError naming the field, before any work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from ftcircuits.finetune.methods import MethodConfig
from ftcircuits.models.loader import ModelSourceError, resolve_model_source
from ftcircuits.tasks.registry import TASKS, TaskSpecError, task_family


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(Strict):
    """One task: its family name and parameters, size and seed."""

    name: str
    range: int | None = Field(None, description="addsub operand range R in {100..500}")
    part: Literal["full", "inner", "outer"] | None = None
    geometric_share: float | None = Field(None, ge=0, le=1)
    size: int | None = Field(None, ge=10, description="items before the split; default: the paper's")
    seed: int = 0
    circuit_share: float = Field(0.2, gt=0, lt=1)

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sorted(TASKS))}")
        return name

    @model_validator(mode="after")
    def _parameters_fit_task(self) -> TaskSpec:
        try:
            self.family()
        except TaskSpecError as error:
            raise ValueError(str(error)) from None
        return self

    def parameters(self) -> dict[str, Any]:
        """Return the family parameters that are set."""
        fields = {"range": self.range, "part": self.part, "geometric_share": self.geometric_share}
        return {k: v for k, v in fields.items() if v is not None}

    def family(self):
        return task_family(self.name, **self.parameters())

    def dataset_name(self) -> str:
        """Return a file-system name such as ``addsub-100`` or ``compositional-inner``."""
        values = [str(v) for k, v in sorted(self.parameters().items()) if k != "geometric_share"]
        return "-".join([self.name, *values])

    def items(self) -> int:
        return self.size or self.family().default_size


def _checked_model(source: str) -> str:
    try:
        resolve_model_source(source)
    except ModelSourceError as error:
        raise ValueError(str(error)) from None
    return source


ModelSource = Annotated[str, AfterValidator(_checked_model)]
"""A model source ("tiny", a model directory, ``shape:NAME`` or a hub id), checked before any work."""


PERTURB_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # robustness: shares of items replaced


class DataConfig(Strict):
    """``jobs.make_data``: build task datasets under a model's tokenizer."""

    tasks: list[TaskSpec]
    model: ModelSource = "tiny"
    out: Path = Path("data")
    perturb_ratios: list[float] = list(PERTURB_RATIOS)

    @field_validator("perturb_ratios")
    @classmethod
    def _ratios_in_unit_interval(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"perturbation ratios must lie in (0, 1), got {bad}")
        return ratios


class PlainFinetuneConfig(Strict):
    """A plain-PyTorch full fine-tune (no Ray), answer-token loss."""

    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42


def all_paper_tasks() -> list[TaskSpec]:
    """Return one spec per task of the paper (Add/Sub at every range, compositional and its parts)."""
    specs = [TaskSpec(name="addsub", range=r) for r in (100, 200, 300, 400, 500)]
    specs += [TaskSpec(name=n) for n in ("muldiv", "sequence", "lcm", "function")]
    specs += [TaskSpec(name="compositional", part=p) for p in ("full", "inner", "outer")]
    return specs


class DynamicsStage(Strict):
    """The study's circuit-dynamics stage: a fine-tuning preset run on Ray, its circuits, their analysis."""

    finetune_config: Path = Path("jobs/configs/finetune-tiny.yaml")
    circuit_overrides: list[str] = Field(
        default_factory=list, description="--set overrides for jobs.circuits --run and jobs.analyze"
    )

    @field_validator("finetune_config")
    @classmethod
    def _preset_exists(cls, path: Path) -> Path:
        if not Path(path).is_file():
            raise ValueError(f"fine-tuning preset {str(path)!r} does not exist")
        return path


class StudyConfig(Strict):
    """The main job: data for every task, base accuracy, a short fine-tune, accuracy after; then
    (``dynamics``) a fine-tuning run on Ray with its circuits over checkpoints and their analysis."""

    model: ModelSource = "tiny"
    tasks: list[TaskSpec] = Field(default_factory=all_paper_tasks)
    finetune_task: TaskSpec = TaskSpec(name="addsub", range=100)
    finetune: PlainFinetuneConfig = PlainFinetuneConfig()
    out: Path = Path("runs/study")
    eval_batch_size: int = Field(256, ge=1)
    threads: int = Field(2, ge=1)
    dynamics: DynamicsStage | None = None


class DiscoverySettings(Strict):
    """How a circuit is discovered: EAP-IG attribution, metric and edge selection (shared by circuit jobs)."""

    split: Literal["finetune", "circuit"] = "circuit"
    examples: int | None = Field(None, ge=1, description="first N items of the split (default: all)")
    method: Literal["eap", "clean-corrupted", "eap-ig-inputs"] = "eap-ig-inputs"
    steps: int = Field(5, ge=1)
    step_convention: Literal["k=1..m", "k=0..m-1"] = "k=1..m"
    metric: Literal["kl", "kl_vocab_mean", "logit_diff", "prob"] = "kl"
    batch_size: int = Field(32, ge=1)
    selection: Literal["topn", "greedy"] = "topn"
    fraction: float = Field(0.05, gt=0, le=1)
    curve: bool = False
    threads: int = Field(2, ge=1, description="torch threads per process (per actor in a run)")

    def discovery_key(self) -> dict:
        """Return the settings that change a circuit (its part of the output key), not the plumbing."""
        return self.model_dump(mode="json", include=set(DiscoverySettings.model_fields) - {"threads"})


class CircuitJobConfig(DiscoverySettings):
    """``jobs.circuits``: discover a circuit of a model on a dataset split."""

    model: ModelSource = "tiny"
    data: Path
    out: Path = Path("runs/circuits")

    @field_validator("data")
    @classmethod
    def _dataset_exists(cls, data: Path) -> Path:
        if not (Path(data) / "manifest.json").is_file():
            raise ValueError(f"no dataset at {str(data)!r} (manifest.json missing; run jobs.make_data)")
        return data


class CircuitRunConfig(DiscoverySettings):
    """``jobs.circuits --run``: circuits of the base and every checkpoint of a fine-tuning run, on Ray.

    With ``robustness``, also the circuits of the base and of a random-init model
    of the same shape on every perturbed variant of the circuit split.
    """

    run: Path
    examples: int | None = Field(256, ge=1, description="first N items of the split (default: all)")
    robustness: bool = True
    random_seed: int = 0
    actors: int = Field(2, ge=1, description="long-lived actors, each holding the base model once")
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0, description="fractions share a GPU between actors")
    in_flight_per_actor: int = Field(2, ge=1, description="tasks queued per actor (bounds memory)")
    retries: int = Field(2, ge=0, description="restarts of a dead actor and retries of its task")
    threads: int = Field(1, ge=1, description="torch threads per actor")

    @model_validator(mode="after")
    def _robustness_needs_the_circuit_split(self) -> CircuitRunConfig:
        if self.robustness and self.split != "circuit":
            raise ValueError("robustness compares perturbed circuit splits: it needs split='circuit'")
        return self

    @field_validator("run")
    @classmethod
    def _run_has_checkpoints(cls, run: Path) -> Path:
        index = Path(run) / "checkpoints" / "index.parquet"
        if not index.is_file():
            raise ValueError(f"no fine-tuning run at {str(run)!r} ({index} missing; run jobs.finetune)")
        return run


class AnalysisConfig(CircuitRunConfig):
    """``jobs.analyze``: dynamics of the circuits ``jobs.circuits --run`` found with the same settings."""

    critical_k: int = Field(5, ge=1, description="top-k critical layers (capped at the layer count)")


class CompositionalConfig(DiscoverySettings):
    """``jobs.compositional``: merge the subtasks' circuits and test them on the compositional task."""

    model: ModelSource = "tiny"
    data: Path = Field(Path("runs/compositional/data"), description="datasets built here when missing")
    examples: int | None = Field(256, ge=1, description="first N items of each split (default: all)")
    budgets: list[float] = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1]
    nodes: Literal["union", "intersection"] = "union"
    score: Literal["mean", "max", "min"] = "mean"
    out: Path = Path("runs/compositional")

    @field_validator("budgets")
    @classmethod
    def _budgets_are_fractions(cls, budgets: list[float]) -> list[float]:
        bad = [b for b in budgets if not 0 < b <= 1]
        if bad or not budgets:
            raise ValueError(f"budgets must be edge fractions in (0, 1], got {bad or 'none'}")
        return sorted(budgets)


class TrainConfig(Strict):
    """Optimisation of a fine-tuning run (paper appendix: batch 8 x accumulation 4, warmup 50)."""

    lr: float = Field(3e-4, gt=0)
    epochs: int = Field(2, ge=1)
    micro_batch_size: int = Field(8, ge=1, description="per worker")
    grad_accumulation: int = Field(4, ge=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42
    checkpoint_every: int = Field(25, ge=1, description="optimiser steps between checkpoints")
    lr_groups: dict[str, float] = Field(
        default_factory=dict,
        description="regex over parameter names -> learning rate (first match wins), e.g. CircuitLoRA's "
        "critical layers; other parameters take lr",
    )

    @field_validator("lr_groups")
    @classmethod
    def _lr_groups_are_valid(cls, groups: dict[str, float]) -> dict[str, float]:
        for pattern, lr in groups.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"lr_groups pattern {pattern!r} is not a regular expression: {error}"
                ) from None
            if lr <= 0:
                raise ValueError(f"lr_groups[{pattern!r}] must be > 0, got {lr}")
        return groups


class DeepSpeedSettings(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class ScalingSettings(Strict):
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)


class FinetuneConfig(Strict):
    """``jobs.finetune``: one fine-tuning run on Ray Train with DeepSpeed."""

    model: ModelSource = "tiny"
    task: TaskSpec = TaskSpec(name="addsub", range=100)
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    scaling: ScalingSettings = ScalingSettings()
    eval_batch_size: int = Field(256, ge=1)
    out: Path = Path("runs/finetune")

    @model_validator(mode="after")
    def _adalora_needs_zero_stage_0(self) -> FinetuneConfig:
        if self.method.name == "adalora" and self.deepspeed.zero_stage != 0:
            raise ValueError(
                f"method.name 'adalora' needs deepspeed.zero_stage=0, not {self.deepspeed.zero_stage}: its "
                "budget reallocation reads the gradients on the parameters, which ZeRO 1-3 partition away"
            )
        return self

    @model_validator(mode="after")
    def _precision_fits_device(self) -> FinetuneConfig:
        if self.deepspeed.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError(f"deepspeed.precision {self.deepspeed.precision!r} needs scaling.use_gpu=true")
        return self


Schema = TypeVar("Schema", bound=BaseModel)


def schema_defaults(schema: type[BaseModel]) -> dict:
    """Return the JSON-like defaults of ``schema``'s fields that have one."""
    out = {}
    for name, field in schema.model_fields.items():
        if not field.is_required():
            out[name] = to_jsonable_python(field.get_default(call_default_factory=True, validated_data={}))
    return out


def apply_override(tree: dict, assignment: str, defaults: dict | None = None) -> dict:
    """Return ``tree`` with ``a.b.c=value`` set; the value is parsed as YAML (numbers, lists, ...).

    A section the tree lacks is first filled from ``defaults``, so
    ``finetune_task.range=200`` keeps the default task's other fields.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node, default = tree, defaults or {}
    for key in keys[:-1]:
        default = default.get(key, {}) if isinstance(default, dict) else {}
        child = node.setdefault(key, dict(default) if isinstance(default, dict) else {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)
    return tree


def describe_validation_error(error: ValidationError) -> str:
    """Return one message naming every bad field and why."""
    lines = []
    for issue in error.errors():
        where = ".".join(str(p) for p in issue["loc"]) or "(top level)"
        message = issue["msg"].removeprefix("Value error, ")
        if issue["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{where}: {message}")
    return "invalid config: " + "; ".join(lines)


def load_config(schema: type[Schema], path: Path | None = None, overrides: list[str] = ()) -> Schema:
    """Load ``schema`` from a YAML file (or defaults) with dotted overrides; raise ConfigError."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    defaults = schema_defaults(schema)
    for assignment in overrides:
        tree = apply_override(tree, assignment, defaults)
    try:
        return schema.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
