"""Every plain-PyTorch core measured on one device, next to the plan's estimates for it (random weights of
each shipped shape, eager attention; no Ray, no polars): EAP-IG (``attribute_batch``) against the floor, one
``circuit_evaluation`` of the circuit its scores select and a ``faithfulness_curve`` (``eap_rows``), and a
DeepSpeed micro-step of a fine-tuning preset (``step_row``). On CPU (a smoke run) everything runs in fp32,
and fine-tuning without its warm-up step."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS, circuit_evaluation, faithfulness_curve
from ftcircuits.circuits.memory import (
    MEMORY_SLACK,
    CircuitMemory,
    circuit_memory,
    difference_buffer_bytes,
    measured_floor_figure,
)
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import select_circuit
from ftcircuits.config.benchmarks import BenchGpuConfig
from ftcircuits.encoding import answer_batch
from ftcircuits.finetune.deepspeed_strategy import DeepSpeedStrategy
from ftcircuits.finetune.loop import decay_groups
from ftcircuits.finetune.methods import apply_method
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.loader import SHAPE_PREFIX
from ftcircuits.models.shapes import build_same_shape, layer_overrides, shape_for_hub_id
from ftcircuits.sizing.gpu_memory import DTYPES, gpu_memory
from ftcircuits.sizing.measuring import floor_pass, measured, measured_cuda, random_batch, summary
from ftcircuits.sizing.plan_figures import figure
from ftcircuits.sizing.preset_size import counts_under_method
from ftcircuits.sizing.throughput import (
    attribution_flops_per_token,
    circuit_throughput,
    evaluation_flops_per_token,
    finetune_flops_per_token,
    finetune_throughput,
)

# issue 17's table: per shape, (precision, tokens per prompt, batches)
SHAPE_RUNS: dict[str, tuple[str, int, list[int]]] = {
    "pythia-1.4b-deduped": ("bf16", 24, [8, 32]),
    "gpt-neo-2.7B": ("bf16", 24, [32]),
    "opt-6.7b": ("bf16", 24, [8, 16, 32]),
    "tinyllama-1.1b": ("bf16", 24, [32]),
    "gpt2": ("fp32", 16, [8]),
}
DEFAULT_RUN = ("bf16", 24, [8])


@dataclass
class EapRow:
    """One shape at one batch: measured EAP-IG, floor, evaluation and curve, and the plan's estimates."""

    shape: str
    precision: str
    layers: int
    edges: int
    batch: int
    length: int
    steps: int
    ours_s: float
    ours_peak: int  # bytes above the weights
    floor_s: float
    floor_peak: int
    buffer: int
    eval_s: float
    eval_peak: int
    curve_s: float | None  # at the shape's largest batch only
    curve_peak: int | None
    faithfulness: float  # of the circuit at the budget, on this batch
    plan: CircuitMemory
    plan_ours_s: float | None  # the plan's seconds on this GPU (None off a known GPU)
    plan_eval_s: float | None
    floor_figure: float  # the floor's bytes per layer, token and width it implies (FLOOR_BYTES' unit)

    @property
    def bound(self) -> float:
        return MEMORY_SLACK * (self.floor_peak + self.buffer)


@dataclass
class StepRow:
    """One fine-tuning preset's DeepSpeed micro-steps, and the plan's estimates."""

    preset: str
    shape: str
    layers: int
    method: str
    zero_stage: int
    precision: str
    micro_batch: int
    length: int
    grad_accumulation: int
    seconds: float  # per micro-batch
    peak: int  # bytes, from before the model was built
    plan_memory: int  # the plan's per-GPU memory
    plan_seconds: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.micro_batch * self.length / self.seconds


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _model(shape: str, device: torch.device, dtype: torch.dtype, layers: int | None) -> torch.nn.Module:
    overrides = layer_overrides(shape, layers) if layers else {}
    model = build_same_shape(shape, device=device, dtype=dtype, **overrides)
    model.config._attn_implementation = "eager"
    return model


def eap_rows(shape: str, config: BenchGpuConfig, device: torch.device, gpu: str | None) -> list[EapRow]:
    """Return one row per batch of ``shape``: EAP-IG, the floor, an evaluation and a curve, and the plan."""
    precision, length, batches = SHAPE_RUNS.get(shape, DEFAULT_RUN)
    length, batches = config.length or length, config.batches or batches
    precision = precision if device.type == "cuda" else "fp32"  # 16-bit matmuls crawl on CPU
    model = _model(shape, device, DTYPES[precision], config.layers)
    probe = ModelProbe(model, describe_architecture(model.config))
    attribution = AttributionConfig(steps=config.steps, metric="kl")
    attribute_batch(probe, random_batch(probe.arch.vocab, 1, length).to(device), attribution)  # warm-up
    rows = []
    for batch in batches:
        curve = batch == max(batches)
        rows.append(eap_row(probe, shape, precision, batch, length, attribution, config, gpu, curve))
        _release(device)
    return rows


def eap_row(
    probe: ModelProbe, shape: str, precision: str, batch_size: int, length: int,
    attribution: AttributionConfig, config: BenchGpuConfig, gpu: str | None, curve: bool,
) -> EapRow:  # fmt: skip
    """Return EAP-IG against the floor (median seconds, largest peak of ``config.repeats`` interleaved runs),
    one evaluation of the circuit its scores select (and with ``curve`` a faithfulness curve), and the
    plan's estimates."""
    arch, dtype, steps = probe.arch, DTYPES[precision], config.steps
    device = next(probe.model.parameters()).device
    batch = random_batch(arch.vocab, batch_size, length).to(device)
    measure = measured_cuda if device.type == "cuda" else measured
    runs: dict[str, list] = {"ours": [], "floor": []}
    kept: dict[str, torch.Tensor] = {}  # the newest scores, for the circuit

    def ours() -> None:
        kept["scores"] = attribute_batch(probe, batch, attribution)

    for _ in range(config.repeats):  # interleaved, so drift in the machine's speed hits both alike
        kept.clear()  # before the run starts, so its peak counts its own scores only
        runs["ours"].append(measure(ours))
        runs["floor"].append(measure(lambda: floor_pass(probe, batch, steps)))
    (ours_s, ours_peak), (floor_s, floor_peak) = summary(runs["ours"]), summary(runs["floor"])
    scores = kept.pop("scores")
    circuit = select_circuit(scores, probe.graph, "top", budget=config.budget)
    result = {}
    eval_s, eval_peak = measure(lambda: result.update(circuit_evaluation(probe, [batch], circuit, "kl")))
    curve_s = curve_peak = None
    if curve:
        budgets = config.curve_budgets or DEFAULT_BUDGETS
        curve_s, curve_peak = measure(lambda: faithfulness_curve(probe, [batch], scores, "kl", budgets))
    tokens, edges = batch_size * length, probe.graph.n_edges
    parameters = sum(p.numel() for p in probe.model.parameters())
    plan_ours = plan_eval = None
    if gpu is not None:
        flops = tokens * attribution_flops_per_token(parameters, edges, arch.d_model, steps)
        plan_ours = circuit_throughput("attribution", shape, precision, batch_size).seconds(flops, gpu)
        flops = tokens * evaluation_flops_per_token(parameters, edges, arch.d_model)
        plan_eval = circuit_throughput("evaluation", shape, precision, batch_size).seconds(flops, gpu)
    return EapRow(
        shape, precision, arch.layers, edges, batch_size, length, steps, ours_s, ours_peak, floor_s,
        floor_peak, difference_buffer_bytes(arch, batch_size, length, dtype), eval_s, eval_peak, curve_s,
        curve_peak, result["faithfulness"], circuit_memory(arch, batch_size, length, steps, dtype), plan_ours,
        plan_eval, measured_floor_figure(arch, steps * batch_size, length, dtype, floor_peak),
    )  # fmt: skip


def preset_shape(config: FinetuneConfig) -> str | None:
    """Return the shipped shape of a preset's model (None when it has none)."""
    model = config.model
    return model.removeprefix(SHAPE_PREFIX) if model.startswith(SHAPE_PREFIX) else shape_for_hub_id(model)


def step_row(
    name: str, preset: FinetuneConfig, config: BenchGpuConfig, device: torch.device, gpu: str | None
) -> StepRow:
    """Return the seconds per micro-batch and peak memory of ``preset``'s DeepSpeed micro-steps on one device
    (fp32 on CPU, which DeepSpeed's bf16 needs a GPU for), after one warm-up optimiser step on a GPU."""
    shape = preset_shape(preset)
    precision = preset.deepspeed.precision if device.type == "cuda" else "fp32"
    train, stage = preset.train, preset.deepspeed.zero_stage
    length = config.length or int(figure("sequence_tokens").value)
    micro_steps = train.grad_accumulation * config.repeats
    timed: dict[str, float] = {}

    def steps() -> None:
        model = _model(shape, device, DTYPES[precision], config.layers)
        arch = describe_architecture(model.config)
        model = apply_method(model, arch, preset.method, total_steps=1 + config.repeats)
        settings = train.settings(1 + config.repeats)
        groups = decay_groups(model, train.weight_decay, train.lr_groups)
        strategy = DeepSpeedStrategy(model, settings, train.micro_batch_size, stage, precision, groups)
        batch = random_batch(arch.vocab, train.micro_batch_size, length).clean
        labelled = answer_batch(batch, torch.randint(10, arch.vocab, (train.micro_batch_size,)))
        for _ in range(train.grad_accumulation if device.type == "cuda" else 0):  # one optimiser step
            strategy.micro_step(labelled)
        began = time.perf_counter()
        for _ in range(micro_steps):
            strategy.micro_step(labelled)  # reads the loss: the device is synchronised
        timed["seconds"] = (time.perf_counter() - began) / micro_steps
        if hasattr(strategy.engine, "destroy"):
            strategy.engine.destroy()

    _release(device)
    _, peak = (measured_cuda if device.type == "cuda" else measured)(steps)
    _release(device)
    overrides = layer_overrides(shape, config.layers) if config.layers else {}
    skeleton = build_same_shape(shape, device="meta", **overrides)
    counts = counts_under_method(skeleton, preset.method, 1, f"shape {shape}", shape)
    at_precision = preset.model_copy(
        update={"deepspeed": preset.deepspeed.model_copy(update={"precision": precision})}
    )
    plan_memory = gpu_memory(at_precision, counts, length).total
    plan_seconds = None
    if gpu is not None:
        flops = train.micro_batch_size * length * finetune_flops_per_token(preset.method.name, counts.total)
        plan_seconds = finetune_throughput(preset.method.name, stage, shape).seconds(flops, gpu)
    method = preset.method.name + (
        f" r={preset.method.r}" if preset.method.name in ("lora", "adalora") else ""
    )
    return StepRow(
        name, shape, counts.arch.layers, method, stage, precision, train.micro_batch_size, length,
        train.grad_accumulation, timed["seconds"], peak, plan_memory, plan_seconds,
    )  # fmt: skip
