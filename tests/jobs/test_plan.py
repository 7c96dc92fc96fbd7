"""jobs.plan: DeepSpeed's own estimates per GPU, the node type of ray_cluster.yaml, GPU-hours, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from ftcircuits.cluster.node_types import ClusterConfigError, gpu_node_types
from ftcircuits.cluster.plan_figures import figure
from ftcircuits.cluster.scale_plan import PlanError, ScalePlan, activation_bytes, plan_run
from ftcircuits.config.loading import load_config
from ftcircuits.config.training import FinetuneConfig
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


def test_the_cluster_config_has_two_gpu_node_types():
    found = [(n.name, n.instance_type, n.gpu, n.gpus, n.max_workers) for n in gpu_node_types(CLUSTER_YAML)]
    assert found == [
        ("gpu-4xa10g", "g5.12xlarge", "A10G", 4, 4),
        ("gpu-8xa100", "p4d.24xlarge", "A100-40GB", 8, 1),
    ]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_paper_preset_fits_one_a10g(plans, name):
    plan = plans[name]
    total, trainable, largest = PRESETS[name]
    assert (plan.counts.total, plan.counts.trainable, plan.counts.largest_layer) == (
        total,
        trainable,
        largest,
    )
    assert plan.counts.frozen == total
    assert (plan.size.finetune_items, plan.size.steps, plan.size.checkpoints) == (4000, 250, 11)
    assert [(p.node_type.name, p.nodes) for p in plan.fits] == [("gpu-4xa10g", 1), ("gpu-8xa100", 1)]
    assert plan.memory.total <= plan.node_type.usable_gpu_memory == int(0.9 * 24 * 2**30)
    assert plan.memory.frozen_weights == 2 * total  # bf16, 1 GPU
    assert [s.name for s in plan.stages] == ["fine-tuning", "circuits"] and plan.gpu_hours > 0


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


def test_finetuning_hours_are_flops_over_the_assumed_throughput(plans):
    plan = plans["finetune-pythia-1.4b.yaml"]
    n = 1_414_647_808
    flops = 250 * 32 * 32 * 4 * n + 11 * 1000 * 32 * 2 * n  # LoRA: 4N per trained token, 2N per evaluated one
    expected = flops / (70e12 * figure("mfu.finetune").value) / 3600
    assert plan.stages[0].gpu_hours == pytest.approx(expected, rel=1e-12)


def test_opt_full_finetuning_goes_to_the_a100_node():
    plan = preset_plan("finetune-opt-6.7b.yaml", FPFT_8_GPUS)
    assert plan.counts.trainable == 6_658_473_984 and plan.memory.frozen_weights == 0
    zero3 = estimate_zero3_model_states_mem_needs(
        total_params=6_658_473_984, largest_layer_params=205_914_112, num_gpus_per_node=8, num_nodes=1,
        cpu_offload=False, cpu_offload_params=False,
    )[1]  # fmt: skip
    assert plan.memory.model_states == zero3
    # one p4d node first; two g5 nodes would hold it too, with ZeRO-3's gathers between nodes
    assert [(p.node_type.name, p.nodes) for p in plan.fits] == [("gpu-8xa100", 1), ("gpu-4xa10g", 2)]


def test_the_cli_prints_the_plan(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    main(["--config", "jobs/configs/finetune-opt-6.7b.yaml"])
    out = capsys.readouterr().out
    assert "Node type (ray_cluster.yaml): gpu-4xa10g (g5.12xlarge: 4 x A10G 24 GiB) on 1 node" in out
    assert "estimate_zero3_model_states_mem_needs(total_params=75,497,472" in out
    assert "mfu.finetune = 0.2: assumed:" in out


def test_a_preset_no_node_type_holds_exits_1(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stop:
        main(["--config", "jobs/configs/finetune-opt-6.7b.yaml", "--set", "method.name=fpft"])  # 1 GPU
    assert stop.value.code == 1
    assert "none fits: 113.56 GiB per GPU needed" in capsys.readouterr().out


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
