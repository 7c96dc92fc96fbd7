"""Discover circuits with EAP-IG: of one model on a dataset, or of every checkpoint of a run on Ray.

python -m jobs.circuits --model tiny --data runs/pipeline/data/addsub-100 [--set discovery.budget=0.05]
python -m jobs.circuits --run runs/finetune-tiny [--set actors.count=2 --set robustness.enabled=false]
                        [--set ground_truth=true]  (also every checkpoint's exact circuit: slow)
"""

from __future__ import annotations

from tqdm import tqdm

from ftcircuits.cluster.connection import ClusterError
from ftcircuits.cluster.run_circuits import run_circuits
from ftcircuits.config.discovery import CircuitJobConfig, CircuitRunConfig
from ftcircuits.study.model_circuit import model_circuit
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny, a model directory or a hub id")
    parser.add_argument("--data", help="a dataset directory written by jobs.make_data")
    parser.add_argument("--run", help="a fine-tuning run directory: circuits of all its checkpoints")
    args = parser.parse_args(argv)
    if args.run is not None:
        config = parse_config(CircuitRunConfig, args, [f"run={args.run}"])
        with exit_on(ClusterError):
            print(run_circuits(config.run, config, config.rebuild).describe())
        return
    extra = [f"{k}={v}" for k, v in (("model", args.model), ("data", args.data)) if v is not None]
    config = parse_config(CircuitJobConfig, args, extra)
    bars: list[tqdm] = []  # made at the first batch: a damaged input stops the job with its one line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc="EAP-IG batches", unit="batch", mininterval=1.0))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    with exit_on():
        found = model_circuit(config, progress)
    for bar in bars:
        bar.close()
    print(found.describe())


if __name__ == "__main__":
    main()
