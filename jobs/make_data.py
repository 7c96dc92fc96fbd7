"""Build task datasets (parquet + manifest) under a model's tokenizer.

python -m jobs.make_data --task addsub --range 100 --model tiny
python -m jobs.make_data --all --model tiny --out data
"""

from __future__ import annotations

import json

from ftcircuits.config.data import DataConfig
from ftcircuits.models.loader import load_tokenizer
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.spec import all_paper_tasks
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--task", help="task name (addsub, muldiv, sequence, lcm, function, compositional)")
    parser.add_argument("--range", type=int, help="addsub operand range (100..500)")
    parser.add_argument("--part", help="compositional part: full, inner, outer")
    parser.add_argument("--size", type=int, help="items before the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", help="every task of the paper")
    parser.add_argument("--model", help="tokenizer source: tiny, a model directory or a hub id")
    parser.add_argument("--out", help="output directory (default data/)")
    args = parser.parse_args(argv)

    extra = [f"{k}={v}" for k, v in (("model", args.model), ("out", args.out)) if v is not None]
    if args.all:
        tasks = [t.model_dump(exclude_none=True) | {"seed": args.seed} for t in all_paper_tasks()]
        extra.append(f"tasks={json.dumps(tasks)}")
    elif args.task:
        fields = {
            "name": args.task,
            "range": args.range,
            "part": args.part,
            "size": args.size,
            "seed": args.seed,
        }
        extra.append(f"tasks={json.dumps([{k: v for k, v in fields.items() if v is not None}])}")
    config = parse_config(DataConfig, args, extra)

    tokenizer = load_tokenizer(config.model)
    for spec in config.tasks:
        with exit_on():
            directory, manifest = make_task_dataset(
                spec, tokenizer, config.model, config.out, config.perturb_ratios
            )
        counts, summary = manifest["counts"], manifest["summary"]
        print(
            f"{spec.dataset_name():22s} {summary['items']:5d} items {summary['splits']}  "
            f"dropped: answer {counts['dropped_answer_not_one_token']}, "
            f"length {counts['dropped_length_mismatch']}, duplicate {counts['dropped_duplicate']}  "
            f"kinds {summary['kind_share']}  -> {directory}",
            flush=True,
        )


if __name__ == "__main__":
    main()
