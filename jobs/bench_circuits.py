"""Circuits over a run: checkpoints per minute with 1 and 2 reused actors vs a fresh Ray task per checkpoint.

    python -m jobs.bench_circuits [--run runs/finetune-tiny] [--examples 64]

Every way discovers the same circuits (the run's checkpoints, no robustness
variants) into its own temporary directory. Reused actors load the base model
once and swap each checkpoint's weights in; a fresh Ray task loads the base model
for every checkpoint (the model-load cost). Peak memory is the largest resident
set of any actor or Ray task process.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import ray

from ftcircuits.cluster.circuit_pool import run_on_actors, start_actors
from ftcircuits.cluster.train import connect
from ftcircuits.config.benchmarks import BenchCircuitsConfig
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.study.over_run import CircuitRunner, CircuitUnit, circuit_units, run_inputs
from jobs.cli import config_parser, flag_overrides, parse_config


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reused_actors(actors: int, units: list[CircuitUnit], args: tuple) -> tuple[float, float]:
    """Return (seconds, peak MiB) for ``actors`` long-lived actors, actor start-up included."""
    began = time.perf_counter()
    handles = start_actors(actors, args)
    run_on_actors(handles, units, in_flight_per_actor=2)
    seconds = time.perf_counter() - began
    peak = max(ray.get([h.__ray_call__.remote(lambda self: peak_rss_mib()) for h in handles]))
    for handle in handles:
        ray.kill(handle)
    return seconds, peak


@ray.remote(num_cpus=1)
def fresh_task(unit: CircuitUnit, args: tuple) -> tuple[float, float]:
    """Load the base model, discover one checkpoint's circuit; return (load seconds, peak MiB)."""
    import torch

    torch.set_num_threads(1)
    began = time.perf_counter()
    runner = CircuitRunner(*args)
    loaded = time.perf_counter() - began
    runner.run(unit)
    return loaded, peak_rss_mib()


def fresh_tasks(units: list[CircuitUnit], args: tuple) -> tuple[float, float, float]:
    """Return (seconds, peak MiB, mean model-load seconds) for one fresh Ray task per checkpoint."""
    began = time.perf_counter()
    results = ray.get([fresh_task.remote(unit, args) for unit in units])
    seconds = time.perf_counter() - began
    return seconds, max(p for _, p in results), sum(s for s, _ in results) / len(results)


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", help="a fine-tuning run with checkpoints (default runs/finetune-tiny)")
    parser.add_argument("--examples", type=int, help="pairs per circuit (default 64)")
    args = parser.parse_args(argv)
    args = parse_config(BenchCircuitsConfig, args, flag_overrides(args, ("run", "examples")))
    discovery = CircuitRunSettings().discovery.model_copy(update={"examples": args.examples})
    inputs = run_inputs(args.run)
    units = circuit_units(inputs, robustness=False)
    connect(num_cpus=2)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-circuits-") as tmp:
        for actors in (1, 2):
            out = Path(tmp) / f"actors-{actors}"
            rows[f"{actors} reused actor(s)"] = reused_actors(actors, units, (inputs.base_model, inputs.data,
                                                                            discovery, out))  # fmt: skip
        out = Path(tmp) / "fresh"
        seconds, peak, load = fresh_tasks(units, (inputs.base_model, inputs.data, discovery, out))
        rows["fresh Ray task per checkpoint (2 in parallel)"] = (seconds, peak)
    per_minute = {name: 60 * len(units) / seconds for name, (seconds, _) in rows.items()}
    print(f"{len(units)} checkpoints of {args.run}, {args.examples} pairs each, 2 CPUs, pid {os.getpid()}")
    for name, (seconds, peak) in rows.items():
        print(f"  {name:44s} {seconds:7.1f} s  {per_minute[name]:6.1f} checkpoints/min  peak {peak:6.0f} MiB")
    one, two, fresh = per_minute.values()
    print(f"2 actors vs 1: {two / one:.2f}x; reused 2 actors vs fresh units: {two / fresh:.2f}x; "
          f"model load per fresh Ray task {load:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
