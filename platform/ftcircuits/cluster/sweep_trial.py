"""One CircuitLoRA trial of a sweep: Algorithm 1 with the trial's choices, then a TorchTrainer fit.

Runs inside a Tune trial (Ray Train V2 no longer takes a trainer inside a ``Tuner``): the trial
function builds the trainer itself, and ``TuneReportCallback`` carries each checkpoint's held-out
accuracy to Tune, where ASHA may stop the trial. Nothing here writes to MLflow: only the Tune
driver does (SQLite takes one writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ftcircuits.cluster.train import finetune_trainer, record_run
from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.sweep import SweepConfig
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.study.circuitlora import circuitlora_finetune_config, plan_circuitlora, write_plan

TRIALS_DIR = "trials"  # a sweep's trial runs: <sweep>/trials/<trial id>


@dataclass(frozen=True)
class SweepInputs:
    """What every trial shares, computed once per sweep: the reference run, its circuits, the dataset."""

    sweep: SweepConfig
    preset: FinetuneConfig
    reference_run: Path
    circuits_dir: Path
    base_model: str
    data_dir: Path


def circuitlora_config(params: dict, sweep: SweepConfig, out: Path) -> CircuitLoraConfig:
    """Return the CircuitLoRA config of one trial's sampled ``params``."""
    if "ratio" in params:
        ranks = {"choice": "matched", "lora_r": sweep.lora_r, "ratio": params["ratio"]}
    else:
        ranks = {"choice": "explicit", "other": params["r_other"], "critical": params["r_critical"]}
    return CircuitLoraConfig.model_validate({
        "reference_config": str(sweep.reference_config), "finetune_config": str(sweep.finetune_config),
        "critical": {"variant": params["variant"], "rule": "topk", "k": params["k"]}, "ranks": ranks,
        "lr_critical": params["lr_critical"], "lr_other": params["lr_other"], "out": str(out),
        "circuits": sweep.circuits.model_dump(mode="json"),
    })  # fmt: skip


def trial_finetune_config(params: dict, inputs: SweepInputs, out: Path) -> tuple[FinetuneConfig, dict]:
    """Return one trial's fine-tuning config (in ``out``) and its plan, written to ``out``."""
    config = circuitlora_config(params, inputs.sweep, out)
    plan = plan_circuitlora(config, inputs.base_model, inputs.reference_run, inputs.circuits_dir)
    tuned = circuitlora_finetune_config(inputs.preset, plan, config)
    scaling = tuned.scaling.model_copy(update={"workers": inputs.sweep.workers_per_trial})
    tuned = tuned.model_copy(update={"out": Path(out).resolve(), "scaling": scaling})
    write_plan(out, plan)
    return tuned, plan


def run_trial(params: dict, inputs: SweepInputs) -> None:
    """The Tune trainable: plan the trial's CircuitLoRA, then fit its TorchTrainer."""
    out = Path(inputs.sweep.out).resolve() / TRIALS_DIR / tune.get_context().get_trial_id()
    tuned, _ = trial_finetune_config(params, inputs, out)
    record_run(tuned, inputs.data_dir, None)
    result = finetune_trainer(
        tuned, inputs.data_dir, None, max_failures=0, callbacks=[TuneReportCallback()]
    ).fit()
    if result.error is not None:
        raise RuntimeError(f"trial {out.name} failed: {result.error}")
