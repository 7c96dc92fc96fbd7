"""jobs.plan: DeepSpeed's own estimates per GPU, the circuits' memory from circuits/memory.py, the node type
of ray_cluster.yaml that holds both stages, GPU-hours from measured throughput, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from ftcircuits.circuits.memory import circuit_memory
from ftcircuits.config.loading import load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.sizing.gpu_memory import CircuitSettings, activation_bytes, circuit_settings, circuit_size
from ftcircuits.sizing.node_types import ClusterConfigError, gpu_node_types
from ftcircuits.sizing.plan_figures import CIRCUIT_TIMINGS, FINETUNE_TIMINGS, BatchTiming, device_gpu
from ftcircuits.sizing.preset_size import PlanError
from ftcircuits.sizing.scale_plan import ScalePlan, plan_run
from ftcircuits.sizing.throughput import circuit_throughput, finetune_throughput, shape_counts
from jobs.plan import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs"
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
# the paper presets on GPUs: (total parameters, trainable under LoRA r=32, largest layer)
PRESETS = {
    "finetune-pythia-1.4b.yaml": (1_414_647_808, 25_165_824, 103_022_592),
    "finetune-gpt-neo-2.7b.yaml": (2_651_307_520, 47_185_920, 128_657_920),
    "finetune-opt-6.7b.yaml": (6_658_473_984, 75_497_472, 205_914_112),
}
# per preset: the node types that hold both stages, best first; bytes a circuit actor needs on its GPU
# (bf16 weights + circuit_memory(arch, 32, 32, 5, bf16).peak)
NODE_TYPES = {
    "finetune-pythia-1.4b.yaml": ["gpu-4xa10g", "gpu-4xl40s", "gpu-8xa100-80gb"],
    "finetune-gpt-neo-2.7b.yaml": ["gpu-4xl40s", "gpu-8xa100-80gb"],
    "finetune-opt-6.7b.yaml": ["gpu-4xl40s", "gpu-8xa100-80gb"],
}
CIRCUITS = {
    "finetune-pythia-1.4b.yaml": 14_154_283_417,
    "finetune-gpt-neo-2.7b.yaml": 38_183_064_576,
    "finetune-opt-6.7b.yaml": 42_436_388_454,
}
USABLE = {"A10G": int(0.9 * 24 * 2**30), "L40S": int(0.9 * 48 * 2**30), "A100-80GB": int(0.9 * 80 * 2**30)}
FPFT_8_GPUS = [
    "method.name=fpft",
    "scaling.workers=8",
    "train.micro_batch_size=4",
    "train.grad_accumulation=1",
]


def preset_plan(name: str, overrides: list[str] = ()) -> ScalePlan:
    return plan_run(load_config(FinetuneConfig, CONFIGS / name, list(overrides)), CLUSTER_YAML)


@pytest.fixture(scope="module")
def plans() -> dict[str, ScalePlan]:
    return {name: preset_plan(name) for name in PRESETS}


def test_the_cluster_config_has_three_gpu_node_types():
    found = [(n.name, n.instance_type, n.gpu, n.gpus, n.max_workers) for n in gpu_node_types(CLUSTER_YAML)]
    assert found == [
        ("gpu-4xa10g", "g5.12xlarge", "A10G", 4, 4),
        ("gpu-4xl40s", "g6e.12xlarge", "L40S", 4, 2),
        ("gpu-8xa100-80gb", "p4de.24xlarge", "A100-80GB", 8, 1),
    ]


def test_the_circuits_are_sized_at_jobs_circuits_defaults():
    assert circuit_settings() == CircuitSettings(batch_size=32, examples=256, steps=5, baselines=3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_paper_preset_fits_the_node_type_the_plan_names(plans, name):
    plan = plans[name]
    total, trainable, largest = PRESETS[name]
    assert (plan.counts.total, plan.counts.trainable, plan.counts.largest_layer) == (
        total,
        trainable,
        largest,
    )
    assert plan.counts.frozen == total
    assert (plan.size.finetune_items, plan.size.steps, plan.size.checkpoints) == (4000, 250, 11)
    assert [(p.node_type.name, p.nodes) for p in plan.fits] == [(n, 1) for n in NODE_TYPES[name]]
    usable = plan.node_type.usable_gpu_memory
    assert usable == USABLE[plan.node_type.gpu]
    # both stages on one GPU of that node type: the fine-tuning per rank, and a whole circuit actor
    assert plan.memory.total <= usable and plan.circuits.total <= usable
    assert plan.memory.frozen_weights == 2 * total  # bf16, 1 GPU
    assert plan.circuits.weights == 2 * total  # the whole model on the actor's GPU, bf16
    assert plan.circuits.memory == circuit_memory(plan.counts.arch, 32, 32, 5, torch.bfloat16)
    assert plan.circuits.total == 2 * total + plan.circuits.memory.peak == CIRCUITS[name]
    assert [s.name for s in plan.stages] == ["fine-tuning", "circuits"] and plan.gpu_hours > 0


@pytest.mark.parametrize("name", ["finetune-gpt-neo-2.7b.yaml", "finetune-opt-6.7b.yaml"])
def test_an_a10g_holds_their_fine_tuning_but_not_their_circuits(plans, name):
    plan = plans[name]
    assert "gpu-4xa10g" in [p.node_type.name for p in plan.finetune_fits]
    assert "gpu-4xa10g" not in [n.name for n in plan.circuit_fits]
    assert plan.memory.total <= USABLE["A10G"] < plan.circuits.total


def test_model_states_are_deepspeeds_estimate_over_the_trainable_parameters(plans):
    zero3 = estimate_zero3_model_states_mem_needs(
        total_params=75_497_472, largest_layer_params=205_914_112, num_gpus_per_node=1, num_nodes=1,
        cpu_offload=False, cpu_offload_params=False,
    )[1]  # fmt: skip
    assert plans["finetune-opt-6.7b.yaml"].memory.model_states == zero3 == 4 * 205_914_112 + 18 * 75_497_472
    zero2 = estimate_zero2_model_states_mem_needs(
        total_params=25_165_824, num_gpus_per_node=1, num_nodes=1, cpu_offload=False
    )[1]
    assert plans["finetune-pythia-1.4b.yaml"].memory.model_states == zero2 == 20 * 25_165_824


def test_activations_follow_the_stated_formula(plans):
    arch = plans["finetune-pythia-1.4b.yaml"].counts.arch
    layers = 24 * 32 * 8 * 2048 * (34 + 5 * 16 * 32 / 2048)  # layers x s b h (34 + 5 a s / h)
    logits = 32 * 8 * 50304 * (2 + 4)
    assert activation_bytes(arch, 8, 32, "bf16") == layers + logits == 520_814_592
    assert plans["finetune-pythia-1.4b.yaml"].memory.activations == 520_814_592


def test_finetuning_hours_are_flops_at_the_measured_mfu(plans):
    plan = plans["finetune-pythia-1.4b.yaml"]  # on an A10G; measured on an H200 with the same preset
    n = 1_414_647_808
    mfu = 8 * 32 * 4 * n / (0.14 * 989e12)  # 0.14 s per micro-batch of 8 x 32 tokens, 4N per token
    flops = 250 * 32 * 32 * 4 * n + 11 * 1000 * 32 * 2 * n  # LoRA: 4N per trained token, 2N per evaluated one
    assert f"{mfu:.4%}" == "1.0462%"
    assert plan.stages[0].gpu_hours == pytest.approx(flops / (70e12 * mfu) / 3600, rel=1e-12)
    assert plan.stages[0].throughputs[0].choice == "the same shape and setting"


def test_circuit_hours_are_flops_at_the_measured_mfu(plans):
    plan = plans["finetune-opt-6.7b.yaml"]  # on an L40S; attribution measured at batch 16 x 24 tokens
    n, e, d, m = 6_658_473_984, 1_592_881, 4096, 5
    attribution = (2 + 2 * m) * 2 * n + m * 2 * e * d
    evaluation = 8 * n + 2 * e * d
    mfu = 16 * 24 * attribution / (0.709 * 989e12)
    # checkpoints (each with an edge curve of 10 budgets and a node curve of 8), robustness
    units, evaluations = 11 + 40, 11 * (1 + 10 + 8) + 40
    flops = 256 * 32 * (units * attribution + evaluations * evaluation)
    assert plan.stages[1].gpu_hours == pytest.approx(flops / (362e12 * mfu) / 3600, rel=1e-12)
    assert [t.choice for t in plan.stages[1].throughputs] == [
        "carried over (an assumption): batch 16, not 32",
        "carried over (an assumption): attribution's MFU (no evaluation timing yet), batch 16, not 32",
    ]


def test_measured_throughput_is_chosen_by_stage_kind_and_shape():
    # fine-tuning: the same ZeRO stage first, then PEFT or FPFT, then the shape
    assert finetune_throughput("lora", 3, "gpt-neo-2.7B").measured.startswith("opt-6.7b lora ZeRO-3")
    assert finetune_throughput("fpft", 2, "opt-6.7b").measured.startswith("pythia-1.4b-deduped fpft ZeRO-2")
    assert finetune_throughput("ia3", 2, "pythia-1.4b-deduped").choice == "the same shape and setting"
    # circuits: the same shape, then precision, then the nearest batch (the larger on a tie)
    assert circuit_throughput("attribution", "pythia-1.4b-deduped", "bf16", 20).measured.startswith(
        "attribution of pythia-1.4b-deduped bf16, batch 32"
    )
    assert circuit_throughput("attribution", None, "fp32", 8).measured.startswith("attribution of gpt2 fp32")
    timing = BatchTiming("evaluation", "opt-6.7b", "bf16", 32, 24, 5, 0.5, "H200", "measured: x")
    chosen = circuit_throughput("evaluation", "opt-6.7b", "bf16", 32, [*CIRCUIT_TIMINGS, timing])
    counts = shape_counts("opt-6.7b")
    assert (counts.parameters, counts.edges, counts.d_model) == (6_658_473_984, 1_592_881, 4096)
    assert chosen.choice == "the same shape and setting"
    assert chosen.mfu == pytest.approx(32 * 24 * (8 * 6_658_473_984 + 2 * 1_592_881 * 4096) / 0.5 / 989e12)


def test_the_measured_figures_name_their_source():
    timings = [*FINETUNE_TIMINGS, *CIRCUIT_TIMINGS]
    assert all(t.source.startswith("measured: ") and "an assumption" in t.source for t in timings)
    assert device_gpu("NVIDIA H200") == "H200" and device_gpu("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert device_gpu("NVIDIA A10G") == "A10G" and device_gpu("Intel Xeon") is None


def test_batch_size_auto_takes_the_largest_batch_the_gpu_holds(plans):
    counts = plans["finetune-opt-6.7b.yaml"].counts
    usable = USABLE["L40S"]
    size = circuit_size(counts, "bf16", 32, CircuitSettings("auto", 256, 5, 3), 256, usable)
    larger = circuit_memory(counts.arch, size.memory.batch + 1, 32, 5, torch.bfloat16)
    assert size.memory.batch == 36
    assert size.total <= usable < size.weights + larger.peak


def test_opt_full_finetuning_goes_to_the_a100_80gb_node():
    plan = preset_plan("finetune-opt-6.7b.yaml", FPFT_8_GPUS)
    assert plan.counts.trainable == 6_658_473_984 and plan.memory.frozen_weights == 0
    zero3 = estimate_zero3_model_states_mem_needs(
        total_params=6_658_473_984, largest_layer_params=205_914_112, num_gpus_per_node=8, num_nodes=1,
        cpu_offload=False, cpu_offload_params=False,
    )[1]  # fmt: skip
    assert plan.memory.model_states == zero3
    # one p4de node first; two g6e nodes hold both stages too, with ZeRO-3's gathers between nodes; two g5
    # nodes hold the fine-tuning but not the circuits
    assert [(p.node_type.name, p.nodes) for p in plan.fits] == [("gpu-8xa100-80gb", 1), ("gpu-4xl40s", 2)]
    assert [(p.node_type.name, p.nodes) for p in plan.finetune_fits] == [
        ("gpu-8xa100-80gb", 1),
        ("gpu-4xa10g", 2),
        ("gpu-4xl40s", 2),
    ]


def test_the_cli_prints_the_plan(monkeypatch, capsys, plans):
    monkeypatch.chdir(ROOT)
    main(["--config", "jobs/configs/finetune-opt-6.7b.yaml"])
    out = capsys.readouterr().out
    assert (
        "Node type (ray_cluster.yaml): gpu-4xl40s (g6e.12xlarge: 4 x L40S 48 GiB) on 1 node: fine-tuning "
        "15.61 GiB per GPU, circuits 39.52 GiB, of 43.20 GiB usable per GPU" in out
    )
    assert (
        "gpu-4xa10g (g5.12xlarge: 4 x A10G 24 GiB): 21.60 GiB usable; fine-tuning on 1 node, circuits do not "
        "fit" in out
    )
    assert "estimate_zero3_model_states_mem_needs(total_params=75,497,472" in out
    memory = circuit_memory(plans["finetune-opt-6.7b.yaml"].counts.arch, 32, 32, 5, torch.bfloat16)
    assert "discovery.batch_size 32, x 32 tokens, m = 5, bf16; circuits/memory.py" in out
    assert "  weights         12.40 GiB  6,658,473,984 x 2 bytes (bf16)" in out
    assert f"  attribution    {memory.attribution / 2**30:6.2f} GiB  1.1 x (floor 16.40 + difference " in out
    assert f"  evaluation     {memory.evaluation / 2**30:6.2f} GiB  one source buffer" in out
    assert (memory.attribution, memory.evaluation) == (29_119_440_486, 19_281_608_704)
    assert "  total           39.52 GiB  weights + the larger of attribution and evaluation" in out
    assert "floor bytes (opt) = 24.7: measured: " in out
    assert "GPU-hours on L40S (362 TFLOP/s dense BF16), from measured throughput" in out
    assert "opt-6.7b lora ZeRO-3 bf16, 8 x 32 tokens: 1.13 s on H200: measured: " in out
    assert "assumed: model-FLOPs" not in out


def test_a_preset_no_node_type_holds_exits_1(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:
        main(["--config", "jobs/configs/finetune-opt-6.7b.yaml", "--set", "method.name=fpft"])  # 1 GPU
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "none holds both stages (fine-tuning 113.56 GiB per GPU, circuits 39.52 GiB)" in out
    assert "4 x L40S 48 GiB): 43.20 GiB usable; fine-tuning does not fit, circuits fit" in out


def test_a_node_type_without_room_for_the_circuits_is_not_chosen(monkeypatch, capsys, tmp_path):
    (tmp_path / "cluster.yaml").write_text(
        "available_node_types:\n"
        "  g5: {max_workers: 1, resources: {CPU: 48, GPU: 4}, node_config: {InstanceType: g5.12xlarge}}\n"
    )
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:
        main(["--config", "jobs/configs/finetune-opt-6.7b.yaml", "--cluster", str(tmp_path / "cluster.yaml")])
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "none holds both stages (fine-tuning 15.61 GiB per GPU, circuits 39.52 GiB)" in out
    assert (
        "g5 (g5.12xlarge: 4 x A10G 24 GiB): 21.60 GiB usable; fine-tuning on 1 node, circuits do not fit"
        in out
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "jobs/configs/compare-tiny.yaml"], "is not a fine-tuning preset"),
        (["--config", "jobs/configs/finetune-tiny.yaml"], "scaling.use_gpu is false"),
        (
            ["--config", "jobs/configs/finetune-pythia-1.4b.yaml", "--set", "model=EleutherAI/pythia-12b"],
            "model 'EleutherAI/pythia-12b' has no known shape",
        ),
        (
            ["--config", "jobs/configs/finetune-pythia-1.4b.yaml", "--set", "scaling.gpus_per_worker=0.5"],
            "a whole number of GPUs per worker",
        ),
    ],
)
def test_bad_input_stops_with_one_error(monkeypatch, capsys, args, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_hardware_in_the_cluster_config_is_named(tmp_path):
    (tmp_path / "cluster.yaml").write_text(
        "available_node_types:\n"
        "  big: {resources: {CPU: 8, GPU: 4}, node_config: {InstanceType: x9.mega}}\n"
        "  g5: {resources: {CPU: 8, GPU: 2}, node_config: {InstanceType: g5.12xlarge}}\n"
    )
    with pytest.raises(ClusterConfigError, match="node type 'big': instance type 'x9.mega' is not in"):
        gpu_node_types(tmp_path / "cluster.yaml")
    (tmp_path / "cluster.yaml").write_text(
        "available_node_types:\n"
        "  g5: {resources: {CPU: 8, GPU: 2}, node_config: {InstanceType: g5.12xlarge}}\n"
    )
    with pytest.raises(ClusterConfigError, match="resources.GPU is 2, but a g5.12xlarge has 4 GPUs"):
        gpu_node_types(tmp_path / "cluster.yaml")


def test_a_plan_error_is_a_value_error():
    assert issubclass(PlanError, ValueError) and issubclass(ClusterConfigError, ValueError)
