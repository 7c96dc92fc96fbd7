"""jobs.bench_gpu: its CPU smoke run without Ray or polars, its plan estimates (circuits/memory.py's), and the
lines it prints to paste into the plan's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftcircuits.circuits.memory import FloorFigure, circuit_memory, floor_bytes
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import build_same_shape, layer_overrides
from ftcircuits.sizing import plan_figures
from ftcircuits.sizing.gpu_measure import EapRow, StepRow
from ftcircuits.sizing.plan_figures import BatchTiming, StepTiming
from ftcircuits.sizing.throughput import attribution_flops_per_token, circuit_throughput, shape_counts
from jobs.bench_gpu import EAP_HEADER, eap_line, paste_lines

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--device", "cpu", "--shapes", "gpt2", "opt-6.7b", "--layers", "1", "--batches", "1",
         "--length", "8", "--repeats", "1", "--curve-budgets", "0.05", "1"]  # fmt: skip
# the job as a module, in an interpreter where importing ray or polars fails
WITHOUT_RAY_OR_POLARS = (
    "import runpy, sys; sys.modules['ray'] = None; sys.modules['polars'] = None; "
    "sys.argv = ['jobs.bench_gpu', *sys.argv[1:]]; runpy.run_module('jobs.bench_gpu', run_name='__main__')"
)


# a shell's environment: not the rendezvous an earlier DeepSpeed test left in this process (its port is taken)
FRESH_SHELL = {k: v for k, v in os.environ.items()
               if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("bench-gpu")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY_OR_POLARS, *SMOKE, "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=FRESH_SHELL,
    )  # fmt: skip
    figures = json.loads((out / "bench_gpu.json").read_text()) if result.returncode == 0 else {}
    return result, figures


def one_layer(shape: str):
    return describe_architecture(build_same_shape(shape, device="meta", **layer_overrides(shape, 1)).config)


@pytest.mark.slow  # a fresh interpreter imports torch and DeepSpeed; two shapes and a DeepSpeed step on CPU
def test_the_cpu_smoke_runs_without_ray_or_polars(smoke):
    result, _ = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert EAP_HEADER in lines
    assert [line.split()[:4] for line in lines if line.startswith(("gpt2 ", "opt-6.7b "))] == [
        ["gpt2", "fp32", "1", "1x8"],
        ["opt-6.7b", "fp32", "1", "1x8"],
    ]
    step = [line.split() for line in lines if line.startswith("finetune-")]
    assert [s[:9] for s in step] == [
        ["finetune-opt-6.7b.yaml", "opt-6.7b", "1", "lora", "r=32", "3", "fp32", "8x8", "|"]
    ]
    assert "Nothing to paste: measured on cpu (the plan's figures are whole shapes on a known GPU)." in lines
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # shares the smoke run above
def test_the_printed_plan_estimates_are_circuit_memory(smoke):
    result, figures = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["shape"]: row for row in figures["eap"]}
    for line in result.stdout.splitlines():
        shape = line.split(" ", 1)[0]
        if shape not in ("gpt2", "opt-6.7b"):
            continue
        memory = circuit_memory(one_layer(shape), 1, 8, 5, torch.float32)  # fp32 on CPU
        columns = line.split("|")
        plan_attribution, _, plan_floor, _ = columns[3].split()
        _, _, plan_evaluation, _, _ = columns[4].split()
        printed = (plan_attribution, plan_floor, plan_evaluation)
        assert printed == tuple(
            f"{v / 2**30:.3f}" for v in (memory.attribution, memory.floor, memory.evaluation)
        )
        plan = rows[shape]["plan"]
        assert (plan["floor"], plan["buffer"], plan["evaluation"]) == (
            memory.floor,
            memory.buffer,
            memory.evaluation,
        )
        assert rows[shape]["plan_attribution"] == memory.attribution
    (step,) = figures["finetune"]
    assert step["preset"] == "finetune-opt-6.7b.yaml" and step["precision"] == "fp32"
    assert step["plan_memory"] > 0 and step["seconds"] > 0 and step["plan_seconds"] is None


def h200_row(shape: str, batch: int, length: int, seconds: float) -> EapRow:
    arch = describe_architecture(build_same_shape(shape, device="meta").config)
    memory = circuit_memory(arch, batch, length, 5, torch.bfloat16)
    floor = floor_bytes(arch, 5 * batch, length, torch.bfloat16)
    return EapRow(
        shape, "bf16", arch.layers, 1, batch, length, 5, seconds, memory.attribution, 0.2, floor,
        memory.buffer, 0.05, memory.evaluation, 0.5, memory.evaluation, 0.9, memory, seconds, 0.05, 24.7,
    )  # fmt: skip


def test_the_pasted_lines_are_the_figures_tables_own():
    rows = [h200_row("opt-6.7b", 8, 24, 0.412), h200_row("opt-6.7b", 16, 24, 0.709)]
    step = StepRow("finetune-opt-6.7b.yaml", "opt-6.7b", 32, "lora r=32", 3, "bf16", 8, 32, 4, 1.13,
                   int(15.3 * 2**30), int(15.61 * 2**30), 1.13)  # fmt: skip
    lines = paste_lines(rows, [step], "NVIDIA H200", "H200", None)
    code = [line.strip() for line in lines if line.startswith("    ")]
    names = {"BatchTiming": BatchTiming, "StepTiming": StepTiming, "FloorFigure": FloorFigure,
             "_TRANSFER": plan_figures._TRANSFER}  # fmt: skip
    timings = [eval(line.removesuffix(","), names) for line in code if not line.startswith('"')]
    assert [(t.core, t.batch, t.seconds) for t in timings if isinstance(t, BatchTiming)] == [
        ("attribution", 8, 0.412),
        ("evaluation", 8, 0.05),
        ("attribution", 16, 0.709),
        ("evaluation", 16, 0.05),
    ]
    source = timings[-1].source
    assert timings[-1] == StepTiming("opt-6.7b", "lora", 3, "bf16", 8, 32, 1.13, "H200", source)
    assert source.startswith("measured: DeepSpeedStrategy micro-steps on jobs.bench_gpu on one NVIDIA H200")
    (floor,) = [eval("{" + line.removesuffix(",") + "}", names) for line in code if line.startswith('"')]
    assert list(floor) == ["opt"] and floor["opt"].value == 24.7
    assert floor["opt"].source.startswith("measured: floor peak on jobs.bench_gpu on one NVIDIA H200")
    # cut shapes or a CPU give nothing to paste
    assert paste_lines(rows, [step], "NVIDIA H200", "H200", 2) == [
        "Nothing to paste: shapes cut to 2 layers (the plan's figures are whole shapes on a known GPU)."
    ]


def test_a_table_line_puts_the_plan_next_to_the_measurement():
    row = h200_row("opt-6.7b", 16, 24, 0.709)
    columns = eap_line(row).split("|")
    assert columns[0].split() == ["opt-6.7b", "bf16", "32", "16x24"]
    assert columns[2].split()[3] == "1.00"  # ours at the bound: 1.1 x (floor + buffer)
    assert columns[3].split()[:2] == [f"{row.plan.attribution / 2**30:.3f}", "1.00"]


def test_the_plan_reproduces_a_measured_timing_on_its_own_gpu():
    counts = shape_counts("pythia-1.4b-deduped")
    flops = 32 * 24 * attribution_flops_per_token(counts.parameters, counts.edges, counts.d_model, 5)
    throughput = circuit_throughput("attribution", "pythia-1.4b-deduped", "bf16", 32)
    assert throughput.seconds(flops, "H200") == pytest.approx(0.337, rel=1e-12)
