"""Circuit dynamics of a fine-tuning run: similarity over steps, layer edge change, robustness, figures.

    python -m jobs.analyze --run runs/finetune-tiny [--set analysis.critical_k=3] [--run ANOTHER ...]
                           [--set ground_truth=true]

Reads the circuits of ``python -m jobs.circuits --run`` (same ``--set`` circuit settings) and writes
parquet tables and PNG figures to ``<circuits>/analysis``; with several runs (e.g. seeds), each is
analysed, then every headline number is summarised as mean ± std over them in ``--out``. With
``ground_truth=true`` it also reads the exact circuits ``jobs.circuits --run ... --set ground_truth=true``
found and adds the method's agreement with them to the similarity table, the headline and a figure.
"""

from __future__ import annotations

from pathlib import Path

from ftcircuits.config.discovery import AnalysisConfig
from ftcircuits.study.analysis import analyze_run
from ftcircuits.study.seeds import summary_over_runs
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, action="append",
                        help="a fine-tuning run with its circuits (repeat for several runs)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="with several runs: where their summary goes")
    args = parser.parse_args(argv)
    configs = [parse_config(AnalysisConfig, args, [f"run={run}"]) for run in args.run]  # all checked first
    if len(configs) > 1 and args.out is None:
        parser.error("several runs need --out (where the summary over them goes)")
    analyses = {}
    with exit_on():
        for config in configs:
            analyses[str(config.run)] = analyze_run(config.run, config, config.analysis)
            print(analyses[str(config.run)].describe())
        if len(configs) > 1:
            print(summary_over_runs(analyses, args.out).describe())


if __name__ == "__main__":
    main()
