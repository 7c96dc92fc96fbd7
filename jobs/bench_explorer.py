"""Benchmark the circuit explorer at a paper model's graph size: the page's file size and build time, its
load time and each interaction's time in headless Chromium.

    python -m jobs.bench_explorer [--config FILE] [--set shape=pythia-1.4b-deduped checkpoints=5 ...]

Writes a synthetic run (``checkpoints`` circuit files of random, drifting scores over the shape's graph,
selected at ``budget``; no pruning by default, so the circuit holds the budget's whole edge count) and its
explorer page into ``out``, then times in the system's Chromium a slider move, a budget change, a node click
and the side-by-side toggle: ``performance.now()`` around the handler, and until the next animation frame.
On a shared machine wall times stretch with the load: CPU times and the load average are printed too.
"""

from __future__ import annotations

import json
import os
import time

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.selection import Selection
from ftcircuits.config.benchmarks import BenchExplorerConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import shape_config
from ftcircuits.report.explorer_timing import interaction_timings
from ftcircuits.study.dynamics import HEADLINE_BUDGETS
from ftcircuits.study.explorer import write_explorer
from ftcircuits.study.synthetic_circuits import write_synthetic_circuits
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    config = parse_config(BenchExplorerConfig, parser.parse_args(argv))
    for line in benchmark(config):
        print(line, flush=True)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def benchmark(config: BenchExplorerConfig) -> list[str]:
    """Return the benchmark's lines."""
    graph = Graph.of(describe_architecture(shape_config(config.shape)))
    steps = [100 * k for k in range(config.checkpoints)]
    selection = Selection(budget=config.budget, prune=config.prune)
    out, write_s, write_cpu = _timed(lambda: write_synthetic_circuits(
        config.out / "circuits", graph, steps, selection, seed=config.seed))  # fmt: skip
    page, build_s, build_cpu = _timed(lambda: write_explorer(
        out, graph, f"synthetic run, {config.shape}", config.out / "explorer.html"))  # fmt: skip
    budgets = sorted({*HEADLINE_BUDGETS, config.budget})
    node = f"a{graph.layers // 2}.h{graph.heads // 2}"
    timings = interaction_timings(page, budgets.index(config.budget), node, config.repeats)
    lines = [
        f"{config.shape}: {graph.n_edges:,} edges, {len(graph.source_names) + 1} nodes, {config.checkpoints} "
        f"checkpoints, circuits at {budgets} (files: {config.budget}, prune={config.prune}); "
        f"load average {os.getloadavg()[0]:.2f}",
        f"  synthetic circuit files: {write_s:.1f} s (CPU {write_cpu:.1f} s)",
        f"  explorer page: {page.stat().st_size / 2**20:.2f} MiB ({page.stat().st_size:,} bytes), built in "
        f"{build_s:.1f} s (CPU {build_cpu:.1f} s)",
        f"  page load until ready: {timings['load_ms']:.0f} ms",
    ]
    for kind, t in timings["interactions"].items():
        lines.append(
            f"  {kind:6s}: handler median {t['handler_ms']:.1f} ms (max {t['handler_max_ms']:.1f}), to next "
            f"frame median {t['frame_ms']:.1f} ms (max {t['frame_max_ms']:.1f}); CPU mean: page renderer "
            f"{t['page_cpu_ms']:.0f} ms, all browser processes {t['browser_cpu_ms']:.0f} ms; "
            f"{t['drawn']:,} edges"
        )
    errors = timings["console_errors"] or "none"
    lines.append(f"  console errors: {errors}; load average now {os.getloadavg()[0]:.2f}")
    lines.append(json.dumps(timings["interactions"]))
    return lines


if __name__ == "__main__":
    main()
