"""Circuit dynamics over several fine-tuning seeds: every headline number as mean ± std, with bands.

    python -m jobs.dynamics --config jobs/configs/dynamics-tiny-3seeds.yaml

For each seed, the dynamics stage as the main job runs it (``jobs.finetune``, ``jobs.circuits --run``,
``jobs.analyze``), each cached: a finished run, its circuits and its analysis are reused. The seed of
the preset itself runs in the preset's ``out`` (so the main job's run serves); the others in
``<out>/seed-<s>``, their circuits on a circuit-split sample of their own (``sample_seed`` = the
seed's position; the first keeps the default sample, so the main job's circuits serve). Robustness
circuits are of the base model: only the first seed computes them. Outputs in ``out``:
``headline.json`` (``seeds``: each seed's headline; ``summary``: mean and std;
``critical_layer_stability``; ``by_budget``), ``seeds.parquet``, ``layer_stability.parquet``,
``budget_bands.parquet`` and ``similarity_bands.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ftcircuits.config.discovery import AnalysisConfig
from ftcircuits.config.loading import load_config
from ftcircuits.config.study import MultiSeedConfig
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.run_layout import ANALYSIS_DIR
from ftcircuits.study.dynamics import HEADLINE_FILE
from ftcircuits.study.over_run import circuits_dir, run_inputs
from ftcircuits.study.seeds import write_across
from jobs import analyze, circuits, finetune
from jobs.cli import config_parser, parse_config


def seed_run(config: MultiSeedConfig, preset: FinetuneConfig, seed: int) -> tuple[Path, list[str]]:
    """Return the run directory of ``seed`` and the ``--set`` overrides that make its fine-tune."""
    if seed == preset.train.seed:
        return Path(preset.out), []
    out = Path(config.out) / f"seed-{seed}"
    return out, [f"train.seed={seed}", f"out={out}"]


def analysis_dir(run: Path, overrides: list[str]) -> Path:
    """Return where ``jobs.analyze --run`` writes the analysis of ``run`` under ``overrides``."""
    settings = load_config(AnalysisConfig, None, [f"run={run}", *overrides])
    return circuits_dir(run, settings, run_inputs(run)) / ANALYSIS_DIR


def main(argv: list[str] | None = None) -> None:
    config = parse_config(MultiSeedConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    preset = load_config(FinetuneConfig, config.finetune_config)
    headlines, similarities = {}, {}
    for index, seed in enumerate(config.seeds):
        run, train = seed_run(config, preset, seed)
        robust = config.robustness and index == 0
        sample = [f"sample_seed={index}"] if config.vary_samples and index > 0 else []
        overrides = [*config.circuit_overrides, *sample, f"robustness={str(robust).lower()}"]
        flags = [arg for value in overrides for arg in ("--set", value)]
        print(f"\n== seed {seed} ({index + 1}/{len(config.seeds)}): fine-tuning into {run}")
        finetune.main(["--config", str(config.finetune_config), *[a for v in train for a in ("--set", v)]])
        print(f"\n== seed {seed}: circuits of every checkpoint ({' '.join(sample) or 'the default sample'})")
        circuits.main(["--run", str(run), *flags])
        print(f"\n== seed {seed}: analysis")
        analyze.main(["--run", str(run), *flags])
        analysis = analysis_dir(run, overrides)
        headlines[seed] = json.loads((analysis / HEADLINE_FILE).read_text())
        similarities[seed] = pl.read_parquet(analysis / "similarity.parquet")

    summary = write_across(headlines, similarities, config.out)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
        print(pl.DataFrame([{"number": k, **v} for k, v in summary["summary"].items()]))
        print(pl.DataFrame(summary["critical_layer_stability"]))
    print(
        f"headline: {Path(config.out) / HEADLINE_FILE}; figure: {Path(config.out) / 'similarity_bands.png'}"
    )


if __name__ == "__main__":
    main()
