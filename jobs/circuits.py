"""Discover a circuit with EAP-IG and write it in the circuit file format.

python -m jobs.circuits --model tiny --data runs/study-tiny/data/addsub-100 [--set fraction=0.05]
"""

from __future__ import annotations

import json

import torch
from tqdm import tqdm

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.discover import Selection, circuit_metadata, discover_circuit
from ftcircuits.circuits.io import edges_table, write_circuit
from ftcircuits.config import CircuitJobConfig
from ftcircuits.models.loader import load_model
from ftcircuits.tasks.io import read_items, read_manifest
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny, a model directory or a hub id")
    parser.add_argument("--data", help="a dataset directory written by jobs.make_data")
    args = parser.parse_args(argv)
    extra = [f"{k}={v}" for k, v in (("model", args.model), ("data", args.data)) if v is not None]
    config = parse_config(CircuitJobConfig, args, extra)
    torch.set_num_threads(config.threads)

    items = read_items(config.data, config.split)
    if config.examples:
        items = items.head(config.examples)
    manifest = read_manifest(config.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(config.model, device=device)
    attribution = AttributionConfig(config.method, config.steps, config.step_convention, config.metric)
    selection = Selection(config.selection, config.fraction)
    bar = tqdm(desc="EAP-IG batches", unit="batch", mininterval=1.0)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    found = discover_circuit(loaded, items, attribution, selection, config.batch_size, progress, config.curve)
    bar.close()
    meta = circuit_metadata(
        loaded, attribution, selection, task=manifest["task"], parameters=manifest["parameters"],
        split=config.split, examples=items.height, data=str(config.data), faithfulness=found.metrics,
        curve=found.curve,
    )  # fmt: skip
    name = f"{config.data.name}-{config.split}-{config.method}-{config.metric}"
    path = write_circuit(config.out / name, edges_table(found.scores, found.circuit, found.graph), meta)
    print(json.dumps(found.metrics, indent=1))
    if found.curve:
        pairs = zip(found.curve["fractions"], found.curve["faithfulness"], strict=True)
        print("faithfulness by edge fraction:", {f: round(v, 3) for f, v in pairs})
    print(f"circuit: {path}")


if __name__ == "__main__":
    main()
