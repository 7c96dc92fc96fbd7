"""Discover circuits with EAP-IG: of one model on a dataset, or of every checkpoint of a run on Ray.

python -m jobs.circuits --model tiny --data runs/study-tiny/data/addsub-100 [--set budget=0.05]
python -m jobs.circuits --run runs/finetune-tiny [--set actors=2 --set robustness=false]
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from ftcircuits.circuits.discover import circuit_metadata, discover_circuit
from ftcircuits.circuits.io import edges_table, write_circuit
from ftcircuits.cluster.circuit_pool import circuits_over_run
from ftcircuits.cluster.connection import ClusterError, check_shared_outputs
from ftcircuits.cluster.train import connect
from ftcircuits.config.discovery import CircuitJobConfig, CircuitRunConfig
from ftcircuits.models.loader import load_model
from ftcircuits.study.over_run import METRICS, RunInputs, run_inputs, run_units
from ftcircuits.tasks.io import read_items, read_manifest
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny, a model directory or a hub id")
    parser.add_argument("--data", help="a dataset directory written by jobs.make_data")
    parser.add_argument("--run", help="a fine-tuning run directory: circuits of all its checkpoints")
    args = parser.parse_args(argv)
    if args.run is not None:
        return circuits_of_run(parse_config(CircuitRunConfig, args, [f"run={args.run}"]))
    extra = [f"{k}={v}" for k, v in (("model", args.model), ("data", args.data)) if v is not None]
    config = parse_config(CircuitJobConfig, args, extra)
    torch.set_num_threads(config.threads)

    items = config.sample(read_items(config.data, config.split))
    manifest = read_manifest(config.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(config.model, device=device)
    attribution, selection = config.attribution_config(), config.selection_config()
    bar = tqdm(desc="EAP-IG batches", unit="batch", mininterval=1.0)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    found = discover_circuit(loaded, items, attribution, selection, config.batch_size, progress, config.curve)
    bar.close()
    print(found.batch.describe())
    meta = circuit_metadata(
        loaded, attribution, selection, task=manifest["task"], parameters=manifest["parameters"],
        split=config.split, examples=items.height, data=str(config.data), faithfulness=found.metrics,
        curve=found.curve, batch_size=found.batch.batch,
    )  # fmt: skip
    name = f"{config.data.name}-{config.split}-{config.method}-{config.metric}"
    path = write_circuit(config.out / name, edges_table(found.scores, found.circuit, found.graph), meta)
    print(json.dumps(found.metrics, indent=1))
    if found.curve:
        pairs = zip(found.curve["budgets"], found.curve["faithfulness"], strict=True)
        print("faithfulness by budget (share of edges):", {b: round(v, 3) for b, v in pairs})
    print(f"circuit: {path}")


def circuits_of_run(config: CircuitRunConfig) -> None:
    """Circuits of the base and every checkpoint (and robustness variants) on Ray, tracked in MLflow."""
    inputs = run_inputs(config.run)  # fails here, before Ray starts, on a bad run or dataset
    training = config.robustness and "briefly-trained" in config.baselines
    with tqdm(total=config.brief_steps, desc="briefly-trained baseline", disable=not training) as brief:
        units = run_units(config, inputs, lambda step, loss: brief.update())  # trains that baseline if asked
    with exit_on(ClusterError):
        connect()
        check_shared_outputs(config.run)
    logger = circuits_logger(config, inputs)
    bar = tqdm(total=len(units), desc="circuits", unit="circuit")

    def on_result(row: dict) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{row['key']} faithfulness {row['faithfulness']:.2f}")
        if row["step"] is not None:
            for name in METRICS:
                logger.metric(name, row[name], step=row["step"])

    out, rows, computed = circuits_over_run(config, on_result)
    bar.close()
    logger.artifact(out, "circuits")
    logger.finish()
    summary = pl.DataFrame(rows).select("key", "model", "step", "ratio", *METRICS)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        print(summary)
    print(f"{computed} circuits computed, {len(rows) - computed} already on disk: {out}")


def circuits_logger(config: CircuitRunConfig, inputs: RunInputs) -> RunLogger:
    """Return a logger into a new MLflow run of the fine-tuning run's store (experiment ``circuits``)."""
    params = config.model_dump(mode="json") | {"base_model": inputs.base_model, "data": str(inputs.data)}
    uri, run_id = create_run(config.run, "circuits", f"{Path(config.run).name}-circuits", params)
    return RunLogger(uri, run_id)


if __name__ == "__main__":
    main()
