"""Compare the attribution methods on a fine-tuning run's base and final checkpoints: CPR, CMD, agreement
with exact patching and seconds per circuit, for every (method, intervention) pair.

    python -m jobs.compare_attribution --run runs/pipeline/comparison/addsub-100/lora/seed-42 \
        [--set out=runs/attribution --set discovery.examples=128 --set 'methods=[eap,exact]']

One process, no Ray (comparable times). Every cell (checkpoint, method, intervention) is cached in
``<out>/cells/``, so a rerun resumes. Outputs in ``out``: ``attribution.parquet`` (one row per cell),
``attribution.md`` (the table) and ``attribution.png`` (faithfulness against budget per method).
"""

from __future__ import annotations

from ftcircuits.config.attribution import AttributionCompareConfig
from ftcircuits.study.attribution_comparison import compare_attribution
from jobs.cli import config_parser, exit_on, exit_on_interrupt, flag_overrides, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", help="a fine-tuning run directory (same as --set run=...)")
    args = parser.parse_args(argv)
    config = parse_config(AttributionCompareConfig, args, flag_overrides(args, ["run"]))
    with exit_on_interrupt(), exit_on():
        print(compare_attribution(config).describe())


if __name__ == "__main__":
    main()
