"""Benchmark exact edge patching: edges stacked as copies of the batch against one pass per edge.

    python -m jobs.bench_exact [--config FILE] [--batch 128] [--sample 200] [--threads 2] [--copies N]
        [--no-full]

On the shipped tiny model and ``batch`` addsub prompt pairs: (a) stacked: ``exact_scores`` with as many
copies per pass as the batch's memory plan holds (or ``copies``); (b) per edge: the same with one copy
per pass. Both score the same seeded sample of edges (one pass per edge over all of them takes long), in
one process; then the stacked way scores every edge. Prints seconds, peak resident memory above each run's
start, the speed-up and the largest difference between the two ways' scores. On a shared machine the wall time
stretches with the load; the process's CPU time (all threads) is printed too.
"""

from __future__ import annotations

import os
import time

import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.exact import exact_scores
from ftcircuits.circuits.memory import exact_copies
from ftcircuits.circuits.pairs import pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.config.benchmarks import BenchExactConfig
from ftcircuits.models.loader import load_model
from ftcircuits.sizing.measuring import measured
from ftcircuits.tasks.dataset import build_dataset
from ftcircuits.tasks.spec import TaskSpec
from jobs.cli import config_parser, flag_overrides, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    for flag in ("--batch", "--sample", "--threads", "--seed", "--copies"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--no-full", dest="full", action="store_false", default=None,
                        help="skip the stacked run over every edge")  # fmt: skip
    args = parser.parse_args(argv)
    config = parse_config(
        BenchExactConfig, args, flag_overrides(args, ("batch", "sample", "threads", "seed", "copies", "full"))
    )
    torch.set_num_threads(config.threads)
    for line in benchmark(config):
        print(line, flush=True)


def benchmark(config: BenchExactConfig) -> list[str]:
    """Return the benchmark's lines."""
    loaded = load_model("tiny")
    items, _ = build_dataset(
        TaskSpec(name="addsub", range=100).family(), loaded.tokenizer, config.batch, seed=0
    )
    batch = pair_batches(loaded.tokenizer, items, config.batch, "cpu")[0]
    probe = ModelProbe(loaded.model, loaded.architecture)
    graph = probe.graph
    attribution = AttributionConfig(method="exact", metric="kl")
    size, length = batch.clean.input_ids.shape
    copies = config.copies or exact_copies(probe.arch, size, length, attribution.stacked, torch.float32)
    mask = graph.edge_mask
    chosen = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(config.seed))[
        : config.sample
    ]
    flat = torch.zeros(graph.n_edges, dtype=torch.bool)
    flat[chosen] = True
    sample = torch.zeros_like(mask)
    sample[mask] = flat
    exact_scores(probe, batch, attribution, edges=sample & (torch.rand(mask.shape) < 0.05))  # warm-up
    results = {}

    cpu: dict[str, float] = {}

    def run(way: str, **kwargs) -> tuple[float, int]:
        start = time.process_time()
        seconds, peak = measured(
            lambda: results.__setitem__(way, exact_scores(probe, batch, attribution, **kwargs))
        )
        cpu[way] = time.process_time() - start
        return seconds, peak

    stacked_s, stacked_m = run("stacked", edges=sample, copies=copies)
    single_s, single_m = run("per-edge", edges=sample, copies=1)
    gap = (results["stacked"] - results["per-edge"]).abs().max().item()
    lines = [
        f"tiny model ({graph.n_edges} edges), {size} pairs x {length} tokens, "
        f"{torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}: {int(sample.sum())} sampled edges",
        f"  stacked ({copies} copies per pass): {stacked_s:.2f} s (CPU {cpu['stacked']:.2f} s), "
        f"peak {stacked_m / 2**20:.0f} MiB",
        f"  one pass per edge: {single_s:.2f} s (CPU {cpu['per-edge']:.2f} s), "
        f"peak {single_m / 2**20:.0f} MiB",
        f"  speed-up per-edge/stacked {single_s / stacked_s:.2f} "
        f"(CPU time {cpu['per-edge'] / cpu['stacked']:.2f}); largest score difference {gap:.2e}",
    ]
    if config.full:
        full_s, full_m = run("full", copies=copies)
        lines.append(
            f"  stacked, all {graph.n_edges} edges: {full_s:.2f} s (CPU {cpu['full']:.2f} s over "
            f"{torch.get_num_threads()} threads), peak {full_m / 2**20:.0f} MiB "
            f"(one pass per edge, extrapolated: {single_s * graph.n_edges / int(sample.sum()):.0f} s); "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
    return lines


if __name__ == "__main__":
    main()
