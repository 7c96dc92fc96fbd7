"""Size a fine-tuning preset for the GPU cluster: memory per GPU, the node type it fits, GPU-hours.

    python -m jobs.plan --config jobs/configs/finetune-opt-6.7b.yaml [--cluster ray_cluster.yaml]

Reads no model hub (model shapes ship with the project) and starts nothing. Exits 1 when no node type
of the cluster config fits the preset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.sizing.node_types import ClusterConfigError
from ftcircuits.sizing.plan_text import format_plan
from ftcircuits.sizing.preset_size import PlanError
from ftcircuits.sizing.scale_plan import plan_run
from jobs.cli import config_parser


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, default=Path("ray_cluster.yaml"), help="Ray cluster config")
    args = parser.parse_args(argv)
    name = str(args.config) if args.config else "defaults"
    try:
        config = load_config(FinetuneConfig, args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {name} is not a fine-tuning preset (jobs.finetune's config): {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        plan = plan_run(config, args.cluster)
    except (PlanError, ClusterConfigError) as error:
        print(f"error: {name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_plan(plan, name, args.cluster))
    if plan.node_type is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
