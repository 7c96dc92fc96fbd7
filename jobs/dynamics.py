"""Circuit dynamics over several fine-tuning seeds: every headline number as mean ± std, with bands.

    python -m jobs.dynamics --config jobs/configs/dynamics-tiny-3seeds.yaml

For each seed, the dynamics stages (fine-tune, circuits over its checkpoints, analysis), each cached: a
finished run, its circuits and its analysis are reused. The seed of the preset itself runs in the
preset's ``out`` (so the pipeline's or another job's run serves); the others in ``<out>/seed-<s>``, their
circuits on a circuit-split sample of their own (``sample_seed`` = the seed's position; the first keeps
the default sample). Robustness circuits are of the base model: only the first seed computes them.
Outputs in ``out``: ``headline.json`` (``seeds``: each seed's headline; ``summary``: mean and std;
``critical_layer_stability``; ``by_budget``), ``seeds.parquet``, ``layer_stability.parquet``,
``budget_bands.parquet`` and ``similarity_bands.png``.
"""

from __future__ import annotations

from pathlib import Path

from ftcircuits.cluster.connection import ClusterError
from ftcircuits.cluster.run_circuits import run_circuits
from ftcircuits.cluster.train import finetune
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.config.dynamics import MultiSeedConfig
from ftcircuits.config.loading import load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.study.analysis import analyze_run
from ftcircuits.study.seeds import summary_over_runs
from jobs.cli import config_parser, exit_on, parse_config


def seed_run(config: MultiSeedConfig, preset: FinetuneConfig, seed: int) -> FinetuneConfig:
    """Return the fine-tuning run of ``seed``: the preset itself for its own seed, else the preset in
    ``<out>/seed-<s>``."""
    if seed == preset.train.seed:
        return preset
    train = preset.train.model_copy(update={"seed": seed})
    return preset.model_copy(update={"train": train, "out": Path(config.out) / f"seed-{seed}"})


def seed_circuits(config: MultiSeedConfig, index: int) -> CircuitRunSettings:
    """Return the circuit settings of the seed at ``index``: robustness for the first only (it is of the
    base model), and with ``vary_samples`` a circuit-split sample of its own after the first."""
    circuits = config.circuits
    robustness = circuits.robustness.model_copy(
        update={"enabled": circuits.robustness.enabled and index == 0}
    )
    discovery = circuits.discovery
    if config.vary_samples and index > 0:
        discovery = discovery.model_copy(update={"sample_seed": index})
    return circuits.model_copy(update={"robustness": robustness, "discovery": discovery})


def main(argv: list[str] | None = None) -> None:
    config = parse_config(MultiSeedConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    preset = load_config(FinetuneConfig, config.finetune_config)
    analyses = {}
    for index, seed in enumerate(config.seeds):
        run, circuits = seed_run(config, preset, seed), seed_circuits(config, index)
        print(f"\n== seed {seed} ({index + 1}/{len(config.seeds)}): fine-tuning into {run.out}", flush=True)
        with exit_on(ClusterError, RuntimeError, ValueError):
            finetune(run)
            print(f"\n== seed {seed}: circuits of every checkpoint (sample seed "
                  f"{circuits.discovery.sample_seed})", flush=True)  # fmt: skip
            print(run_circuits(Path(run.out), circuits, config.rebuild).describe())
        print(f"\n== seed {seed}: analysis", flush=True)
        with exit_on():
            analyses[seed] = analyze_run(Path(run.out), circuits, config.analysis)
        print(analyses[seed].describe())
    with exit_on():
        print(summary_over_runs(analyses, config.out).describe())


if __name__ == "__main__":
    main()
