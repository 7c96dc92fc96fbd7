"""The CircuitLoRA sweep on Ray Tune: Optuna search, ASHA stopping on each checkpoint's held-out accuracy.

The reference run and its circuits are computed once (or reused); each trial plans its own CircuitLoRA
(layer-score variant, k, ranks, learning rates) and fits a TorchTrainer. Running the sweep again on an
interrupted one restores it (``Tuner.restore``). Outputs in ``out``: ``trials.parquet`` (one row per
trial), ``best.yaml`` (a config ``jobs.finetune`` runs as it is), and MLflow (one parent run, a child run
per trial).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from ftcircuits import console
from ftcircuits.cluster.circuitlora import reference_circuits
from ftcircuits.cluster.comparison_trials import TUNE_VERBOSITY
from ftcircuits.cluster.connection import check_shared_outputs, connect
from ftcircuits.cluster.sweep_tracking import TrialRuns, stopped_early
from ftcircuits.cluster.sweep_trial import TRIALS_DIR, SweepInputs, circuitlora_config, run_trial
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.sweep import SweepConfig, SweepSpace
from ftcircuits.console import say
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import index_path, read_checkpoint_index, read_run_record
from ftcircuits.study.circuitlora import PLAN_FILE, check_plannable
from ftcircuits.study.over_run import run_inputs
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run, tracking_uri

METRIC = "eval_accuracy"
SPACE_KEYS = ("variant", "k", "lr_critical", "lr_other", "ratio", "r_other", "r_critical")  # a trial's draw
TUNE_DIR, EXPERIMENT = "tune", "sweep"
PARENT_FILE = "mlflow_parent.json"
# The trial function only drives its TorchTrainer, whose workers hold the CPUs: it asks for no CPU, and
# Tune wants some resource, so one byte of memory.
TRIAL_DRIVER = {"CPU": 0, "memory": 1}


class OptunaSpace:
    """Optuna's define-by-run space (r_c is drawn above the drawn r_o); a class, so Tune can pickle it."""

    def __init__(self, space: SweepSpace) -> None:
        self.space = space

    def __call__(self, trial) -> None:
        space = self.space
        trial.suggest_categorical("variant", space.variant)
        trial.suggest_categorical("k", space.k)
        for name, bounds in (("lr_critical", space.lr_critical), ("lr_other", space.lr_other)):
            trial.suggest_float(name, bounds.low, bounds.high, log=bounds.log)
        if space.ranks == "matched":
            trial.suggest_categorical("ratio", space.ratio)
        else:
            other = trial.suggest_int("r_other", space.r_other.low, space.r_other.high)
            trial.suggest_int("r_critical", max(other + 1, space.r_critical.low), space.r_critical.high)


def checked_presets(config: SweepConfig) -> tuple[FinetuneConfig, FinetuneConfig | None]:
    """Return the trials' preset and the reference run's; refuse, before any trial, a k the model cannot
    have, rank ranges with no r_o < r_c, and a matched parameter count no (k, ratio) of the space can meet."""
    preset = load_config(FinetuneConfig, config.finetune_config)
    given = config.reference_run is not None
    reference = None if given else load_config(FinetuneConfig, config.reference_config)
    space = config.space
    if space.ranks == "search" and space.r_other.low >= space.r_critical.high:
        raise ValueError("space.r_critical must reach above space.r_other: no r_o < r_c to draw")
    ratios = space.ratio if space.ranks == "matched" else []
    check_plannable(preset, config.finetune_config, space.k, ratios, config.lora_r, k_name="space.k")
    return preset, reference


def sweep_inputs(
    config: SweepConfig, preset: FinetuneConfig, reference_preset: FinetuneConfig | None
) -> SweepInputs:
    """Return what every trial shares: the reference run (run now if needed) and its circuits, computed
    once."""
    reference = reference_circuits(config.reference_run, reference_preset, config.circuits, config.rebuild)
    inputs = run_inputs(reference.run)
    return SweepInputs(config, preset, reference.run, reference.circuits, inputs.base_model, inputs.data)


def parent_run(config: SweepConfig, out: Path) -> tuple[str, str]:
    """Return (tracking uri, run id) of the sweep's parent MLflow run, created once per sweep directory."""
    path = out / PARENT_FILE
    if path.is_file():
        return tracking_uri(out), json.loads(path.read_text())["run_id"]
    uri, run_id = create_run(out, "circuitlora-sweep", out.name, config.model_dump(mode="json"))
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"run_id": run_id}))
    return uri, run_id


def build_tuner(config: SweepConfig, inputs: SweepInputs, out: Path, callbacks: list) -> tune.Tuner:
    """Return a new Tuner, or the interrupted sweep's, restored."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, inputs=inputs), TRIAL_DRIVER)
    path = out / TUNE_DIR / EXPERIMENT
    if tune.Tuner.can_restore(path):
        say(f"== restoring the interrupted sweep in {path}")
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    per_trial = config.workers_per_trial * inputs.preset.scaling.cpus_per_worker
    concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))
    scheduler = ASHAScheduler(
        time_attr="training_iteration", metric=METRIC, mode="max", max_t=10_000,
        grace_period=config.grace_checkpoints, reduction_factor=config.reduction_factor,
    )  # fmt: skip
    search = OptunaSearch(OptunaSpace(config.space), metric=METRIC, mode="max", seed=config.seed)
    tune_config = tune.TuneConfig(
        search_alg=search, scheduler=scheduler, num_samples=config.trials, max_concurrent_trials=concurrency
    )
    return tune.Tuner(
        trainable,
        tune_config=tune_config,
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out / TUNE_DIR), callbacks=callbacks,
                                  verbose=TUNE_VERBOSITY[console.quiet()]),
    )  # fmt: skip


def trials_table(results: tune.ResultGrid, out: Path) -> pl.DataFrame:
    """Return one row per trial: its config, trainable parameters, best and last accuracy, stopped early."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        accuracies = history[METRIC].dropna().tolist() if history is not None and METRIC in history else []
        plan_path = out / TRIALS_DIR / trial_id / PLAN_FILE
        plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
        ranks = plan.get("ranks", {})
        trial = out / TRIALS_DIR / trial_id
        size = read_checkpoint_index(trial).row(-1, named=True) if index_path(trial).is_file() else {}
        rows.append({
            "trial_id": trial_id, **{k: result.config.get(k) for k in sorted(result.config)},
            "critical_layers": plan.get("critical_layers"), "r_other": ranks.get("other"),
            "r_critical": ranks.get("critical"), "params": plan.get("params"),
            "matched_params": plan.get("matched_params"), "best_accuracy": max(accuracies, default=None),
            "last_accuracy": accuracies[-1] if accuracies else None, "last_step": metrics.get("step"),
            "param_share": size["trainable_params"] / size["model_params"] if size else None,
            "minutes": metrics.get("time_total_s", 0.0) / 60,
            "stopped_early": stopped_early(out / TRIALS_DIR / trial_id),
            "error": None if result.error is None else str(result.error)[:200],
        })  # fmt: skip
    return pl.DataFrame(rows).sort("best_accuracy", descending=True, nulls_last=True)


def asha_saving(trials: pl.DataFrame) -> dict[str, float]:
    """Return trial-minutes run, and without stopping (a stopped trial scaled to the full run's steps)."""
    finished = trials.filter(~pl.col("stopped_early") & pl.col("error").is_null())
    full_steps = finished["last_step"].max() if finished.height else None
    run = float(trials["minutes"].sum())
    if full_steps is None:
        return {"trial_minutes": run, "trial_minutes_without_stopping": float("nan")}
    scaled = trials.select(
        pl.when(pl.col("stopped_early") & (pl.col("last_step") > 0))
        .then(pl.col("minutes") * full_steps / pl.col("last_step"))
        .otherwise(pl.col("minutes"))
    ).to_series()
    return {"trial_minutes": run, "trial_minutes_without_stopping": float(scaled.sum())}


def write_best(trials: pl.DataFrame, out: Path, inputs: SweepInputs) -> Path | None:
    """Write ``best.yaml``, the best trial's fine-tuning config as ``jobs.finetune`` runs it, and
    ``best-circuitlora.yaml``, its choices as ``jobs.circuitlora`` runs them on the sweep's reference run."""
    ranked = trials.filter(pl.col("best_accuracy").is_not_null())
    if ranked.is_empty():
        return None
    params = {k: v for k, v in ranked.row(0, named=True).items() if k in SPACE_KEYS and v is not None}
    choices = circuitlora_config(params, inputs.sweep, out / "best-circuitlora")
    choices = choices.model_copy(update={"reference_run": inputs.reference_run})
    with atomic_file(out / "best-circuitlora.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(choices.model_dump(mode="json"), sort_keys=False))
    record = read_run_record(out / TRIALS_DIR / ranked["trial_id"][0])
    config = {k: v for k, v in record.items() if k not in ("data_dir", "mlflow_run")}
    config["out"] = str(out / "best-run")
    FinetuneConfig.model_validate(config)  # what jobs.finetune will load
    path = out / "best.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: one row per trial, the best config (None when no trial reported), ASHA's saving."""

    trials: pl.DataFrame = field(repr=False)
    best: Path | None
    saving: dict[str, float]

    def describe(self) -> str:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=220):
            table = str(self.trials.drop("error"))
        run, without = self.saving["trial_minutes"], self.saving["trial_minutes_without_stopping"]
        asha = f"ASHA: {run:.1f} trial-minutes run, {without:.1f} without stopping"
        return f"{table}\n{asha}; best config: {self.best}"


def sweep(config: SweepConfig, callbacks: Sequence[tune.Callback] = ()) -> SweepResult:
    """Run (or resume) the sweep; ``callbacks`` join the MLflow one in the Tune driver. Presets, k and rank
    ranges are refused (ConfigError) before the reference run or any trial; ClusterError when the cluster
    cannot hold the outputs."""
    paths = ["reference_config", "finetune_config", "out"]
    paths += ["reference_run"] if config.reference_run else []
    config = config.model_copy(update={k: Path(getattr(config, k)).resolve() for k in paths})  # trials chdir
    try:
        preset, reference_preset = checked_presets(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    out = Path(config.out)
    inputs = sweep_inputs(config, preset, reference_preset)
    connect()  # Tune would otherwise join any cluster on the machine
    check_shared_outputs(out)
    uri, parent = parent_run(config, out)
    results = build_tuner(config, inputs, out, [TrialRuns(uri, parent, out), *callbacks]).fit()
    trials = trials_table(results, out)
    with atomic_file(out / "trials.parquet") as tmp:
        trials.write_parquet(tmp)
    best = write_best(trials, out, inputs)
    saving = asha_saving(trials)
    logger = RunLogger(uri, parent)
    for key, value in saving.items():
        logger.metric(key, value, step=0)
    if trials["best_accuracy"].is_not_null().any():
        logger.metric("best_accuracy", float(trials["best_accuracy"].max()), step=0)
    logger.artifact(out / "trials.parquet")
    if best is not None:
        logger.artifact(best)
    logger.finish()
    return SweepResult(trials, best, saving)
