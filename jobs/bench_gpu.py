"""Benchmark every plain-PyTorch core on the paper's shapes next to the plan's estimates (one GPU, no Ray).

    python -m jobs.bench_gpu [--device cuda] [--shapes opt-6.7b gpt2] [--batches 8 16] [--layers 1]
                             [--length 24] [--repeats 3] [--skip-finetune] [--out runs/bench-gpu]

Random weights of each shipped shape (``build_same_shape``), eager attention as ``jobs.bench_eap``; on CPU (a
smoke run) everything runs in fp32, and fine-tuning without its warm-up step:
(1) EAP-IG (``attribute_batch``) against the floor at issue 17's batches (pythia-1.4b 8 and 32, gpt-neo-2.7B
32, tinyllama-1.1b 32, opt-6.7b 8, 16 and 32 in bf16 x 24 tokens; gpt2 8 in fp32 x 16 tokens), m = 5:
seconds and peak memory above the weights, the difference buffer and the ratio to the bound
1.1 x (floor peak + buffer); then one ``circuit_evaluation`` of the circuit selected from the scores (and,
at each shape's largest batch, its ``faithfulness_curve``); each next to ``circuit_memory(...)`` and the
plan's time for this GPU.
(2) a DeepSpeed micro-step of each paper fine-tuning preset whose shape runs (its method, ZeRO stage,
precision and micro-batch; one GPU, world size 1): seconds per micro-batch over optimiser steps after one
warm-up step, tokens/s and peak memory, next to the plan's per-GPU memory and time.
At the end, the measured figures as lines to paste into ``sizing/plan_figures.py`` and
``circuits/memory.py``. It imports neither Ray nor polars: a bare GPU machine with torch, transformers,
peft, deepspeed and pydantic runs it.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from pathlib import Path

import torch

from ftcircuits.circuits.memory import MEMORY_SLACK
from ftcircuits.config.benchmarks import BenchGpuConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.finetune.deepspeed_strategy import single_process_environment
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import build_same_shape
from ftcircuits.sizing.gpu_measure import EapRow, StepRow, eap_rows, preset_shape, step_row
from ftcircuits.sizing.plan_figures import device_gpu
from jobs.cli import config_parser, flag_overrides, parse_config

GIB = 2**30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _f(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


EAP_HEADER = (
    f"{'shape':20} {'prec':4} {'L':>3} {'B x T':>7} | {'ours s':>7} {'floor s':>7} {'x':>5} | "
    f"{'ours GiB':>8} {'floor':>8} {'buffer':>8} {'/bound':>6} | {'plan attr':>9} {'/plan':>5} "
    f"{'plan floor':>10} {'/plan':>5} | {'eval s':>7} {'eval GiB':>8} {'plan eval':>9} {'/plan':>5} "
    f"{'curve s':>7} | {'plan s':>7} {'plan eval s':>11}"
)


def eap_line(row: EapRow) -> str:
    """Return one table line: measured seconds and GiB, ratios, and the plan's GiB and seconds."""
    plan = row.plan
    return (
        f"{row.shape:20} {row.precision:4} {row.layers:3d} {f'{row.batch}x{row.length}':>7} | "
        f"{row.ours_s:7.3f} {row.floor_s:7.3f} {row.ours_s / row.floor_s:5.2f} | "
        f"{row.ours_peak / GIB:8.3f} {row.floor_peak / GIB:8.3f} {row.buffer / GIB:8.3f} "
        f"{row.ours_peak / row.bound:6.2f} | {plan.attribution / GIB:9.3f} "
        f"{row.ours_peak / plan.attribution:5.2f} {plan.floor / GIB:10.3f} "
        f"{row.floor_peak / plan.floor:5.2f} | "
        f"{row.eval_s:7.3f} {row.eval_peak / GIB:8.3f} {plan.evaluation / GIB:9.3f} "
        f"{row.eval_peak / plan.evaluation:5.2f} {_f(row.curve_s, '.3f', 7)} | "
        f"{_f(row.plan_ours_s, '.3f', 7)} {_f(row.plan_eval_s, '.3f', 11)}"
    )


STEP_HEADER = (
    f"{'preset':28} {'shape':20} {'L':>3} {'method':9} {'ZeRO':>4} {'prec':4} {'mb x T':>6} | "
    f"{'s/micro':>8} {'tokens/s':>9} {'peak GiB':>8} | {'plan GiB':>8} {'/plan':>5} {'plan s':>8}"
)


def step_line(row: StepRow) -> str:
    """Return one DeepSpeed step line: seconds per micro-batch, tokens/s, peak, and the plan's."""
    return (
        f"{row.preset:28} {row.shape:20} {row.layers:3d} {row.method:9} {row.zero_stage:4d} "
        f"{row.precision:4} {f'{row.micro_batch}x{row.length}':>6} | {row.seconds:8.3f} "
        f"{row.tokens_per_second:9.0f} "
        f"{row.peak / GIB:8.3f} | {row.plan_memory / GIB:8.3f} {row.peak / row.plan_memory:5.2f} "
        f"{_f(row.plan_seconds, '.3f', 8)}"
    )


def paste_lines(
    eap: list[EapRow], steps: list[StepRow], device_name: str, gpu: str | None, layers: int | None
) -> list[str]:
    """Return the measured figures as lines of ``plan_figures.py`` and ``memory.py`` (on a known GPU with
    whole shapes only; otherwise one line saying why there is nothing to paste)."""
    if gpu is None or layers:
        why = f"measured on {device_name}" if gpu is None else f"shapes cut to {layers} layers"
        return [f"Nothing to paste: {why} (the plan's figures are whole shapes on a known GPU)."]
    where = f"jobs.bench_gpu on one {device_name}, torch {torch.__version__}, random weights"
    lines = [f"Paste into platform/ftcircuits/sizing/plan_figures.py ({where}):", "  CIRCUIT_TIMINGS:"]
    for row in eap:
        setting = f"{row.shape} shape, {row.precision}, batch {row.batch} x {row.length} tokens"
        for core, seconds in (("attribution", row.ours_s), ("evaluation", row.eval_s)):
            source = f"measured: {core} on {where}, {setting}{{_TRANSFER}}"
            lines.append(
                f'    BatchTiming("{core}", "{row.shape}", "{row.precision}", {row.batch}, {row.length}, '
                f'{row.steps}, {seconds:.4g}, "{gpu}", f"{source}"),'
            )
    lines.append("  FINETUNE_TIMINGS:")
    for row in steps:
        kind = "fpft" if row.method == "fpft" else "lora"
        source = (
            f"measured: DeepSpeedStrategy micro-steps on {where}, {row.shape} shape, {row.method}, "
            f"ZeRO-{row.zero_stage}, {row.micro_batch} x {row.length} tokens, {row.peak / GIB:.1f} GiB peak"
        )
        lines.append(
            f'    StepTiming("{row.shape}", "{kind}", {row.zero_stage}, "{row.precision}", '
            f'{row.micro_batch}, {row.length}, {row.seconds:.4g}, "{gpu}", f"{source}{{_TRANSFER}}"),'
        )
    lines += ["Paste into platform/ftcircuits/circuits/memory.py (FLOOR_BYTES):"]
    families: dict[str, list[EapRow]] = {}
    for row in eap:
        families.setdefault(_family(row.shape), []).append(row)
    for family, rows in families.items():
        value = sum(r.floor_figure for r in rows) / len(rows)
        batches = ", ".join(str(r.batch) for r in rows)
        source = (
            f"measured: floor peak on {where}, {rows[0].precision}, {rows[0].length}-token prompts, m = "
            f"{rows[0].steps}, less the logits, over layers x tokens x d ({rows[0].shape}, B = {batches})"
        )
        lines.append(f'    "{family}": FloorFigure({value:.1f}, "{source}"),')
    return lines


def _family(shape: str) -> str:
    return describe_architecture(build_same_shape(shape, device="meta").config).family


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", nargs="+", help="model shapes (default: the paper's five)")
    parser.add_argument("--batches", nargs="+", type=int, help="every shape's batches (default: issue 17's)")
    for flag in ("--layers", "--length", "--steps", "--repeats", "--threads"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--curve-budgets", nargs="+", type=float, help="the curve's edge budgets")
    parser.add_argument("--skip-finetune", action="store_true", default=None, help="no DeepSpeed steps")
    parser.add_argument("--out", type=Path, help="also write bench_gpu.txt and bench_gpu.json here")
    args = parser.parse_args(argv)
    names = ("device", "shapes", "batches", "layers", "length", "steps", "repeats", "threads",
             "curve_budgets", "skip_finetune", "out")  # fmt: skip
    config = parse_config(BenchGpuConfig, args, flag_overrides(args, names))
    presets = [] if config.skip_finetune else load_presets(config)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device cuda: no CUDA device is available (use --device cpu)")
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    gpu = device_gpu(device_name) if device.type == "cuda" else None
    lines = [
        f"jobs.bench_gpu on {device_name} (plan GPU: {gpu or 'none'}), torch {torch.__version__}"
        + (f", shapes cut to {config.layers} layers" if config.layers else ""),
        "",
        f"EAP-IG against the floor, m = {config.steps}; GiB above the weights; /bound: ours / "
        f"({MEMORY_SLACK} x (floor + buffer)); plan: circuits/memory.py (attribution, floor, evaluation) "
        "and the plan's seconds on this GPU (sizing/throughput.py); eval: circuit_evaluation at budget "
        f"{config.budget}, curve: faithfulness_curve",
        EAP_HEADER,
    ]
    print("\n".join(lines), flush=True)
    eap: list[EapRow] = []
    for shape in config.shapes:
        for row in eap_rows(shape, config, device, gpu):
            eap.append(row)
            lines.append(eap_line(row))
            print(lines[-1], flush=True)
    steps: list[StepRow] = []
    runnable = [(name, p) for name, p in presets if preset_shape(p) in config.shapes]
    if runnable:
        single_process_environment(_free_port())
        header = [
            "",
            "DeepSpeed steps (one device, world size 1); plan: its per-GPU memory and seconds",
            STEP_HEADER,
        ]
        lines += header
        print("\n".join(header), flush=True)
        for name, preset in runnable:
            steps.append(step_row(name, preset, config, device, gpu))
            lines.append(step_line(steps[-1]))
            print(lines[-1], flush=True)
    paste = ["", *paste_lines(eap, steps, device_name, gpu, config.layers)]
    lines += paste
    print("\n".join(paste), flush=True)
    if config.out:
        write_outputs(config.out, lines, eap, steps, device_name)


def load_presets(config: BenchGpuConfig) -> list[tuple[str, FinetuneConfig]]:
    """Return the fine-tuning presets by file name; exit 2 naming a bad one, before any work."""
    presets = []
    for path in config.presets:
        try:
            presets.append((Path(path).name, load_config(FinetuneConfig, path)))
        except ConfigError as error:
            raise SystemExit(f"error: preset {str(path)!r}: {error}") from None
    return presets


def write_outputs(out: Path, lines: list[str], eap: list[EapRow], steps: list[StepRow], device: str) -> None:
    """Write the printed table and the figures as JSON to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.txt").write_text("\n".join(lines) + "\n")
    figures = {
        "device": device,
        "torch": torch.__version__,
        "eap": [
            asdict(r) | {"plan_attribution": r.plan.attribution, "plan_peak": r.plan.peak, "bound": r.bound}
            for r in eap
        ],
        "finetune": [asdict(r) | {"tokens_per_second": r.tokens_per_second} for r in steps],
    }
    (out / "bench_gpu.json").write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
