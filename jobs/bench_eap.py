"""Benchmark EAP-IG against the floor and the slow per-head-copy reference, on the same batch.

    python -m jobs.bench_eap [--config FILE] [--shapes gpt2 pythia-1.4b-deduped] [--batch 4] [--skip-slow]

(a) ours: ``attribute_batch``; (b) the floor: 2 forwards + m forward+backward
passes of the bare model (to the input embeddings, the m steps stacked as ours
are); (c) the slow reference scorer, ``circuits/reference.py`` (a residual copy per destination).
Prints the median seconds of --repeats interleaved runs, the largest peak memory above each run's
start (resident memory on CPU, allocated memory on CUDA), and ratios. Memory is judged against the
bound ``1.1 x (floor's peak + one [n_sources, B, T, d] difference buffer in the model's dtype)``:
the one activation buffer EAP-IG must keep through the backward pass, beside the floor's own.
"""

from __future__ import annotations

import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.memory import MEMORY_SLACK, difference_buffer_bytes
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.reference import reference_scores
from ftcircuits.config.benchmarks import BenchEapConfig
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import build_same_shape
from ftcircuits.sizing.measuring import floor_pass, measured, measured_cuda, random_batch, summary
from jobs.cli import config_parser, flag_overrides, parse_config

# Sized to finish in minutes on 2 CPU cores: full GPT-2 small; pythia-1.4b's width with 4 of its 24 layers.
DEFAULT_OVERRIDES = {"gpt2": {}, "pythia-1.4b-deduped": {"num_hidden_layers": 4}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", help="model shapes (default: gpt2 pythia-1.4b-deduped)")
    for flag in ("--batch", "--length", "--steps", "--threads", "--repeats", "--layers"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--skip-slow", action="store_true", default=None, help="skip the slow reference (c)")
    args = parser.parse_args(argv)
    names = ("shapes", "batch", "length", "steps", "threads", "skip_slow", "repeats", "layers", "precision",
             "device")  # fmt: skip
    config = parse_config(BenchEapConfig, args, flag_overrides(args, names))
    torch.set_num_threads(config.threads)
    attribution = AttributionConfig(steps=config.steps, metric="kl")
    for shape in config.shapes:
        print(benchmark_shape(shape, config, attribution), flush=True)


def benchmark_shape(shape: str, args: BenchEapConfig, config: AttributionConfig) -> str:
    """Return one line of timings, peak memory and ratios for ``shape``."""
    overrides = DEFAULT_OVERRIDES.get(shape, {}) | ({"num_hidden_layers": args.layers} if args.layers else {})
    model = build_same_shape(shape, **overrides).to(DTYPES[args.precision]).to(args.device)
    model.config._attn_implementation = "eager"
    arch = describe_architecture(model.config)
    probe = ModelProbe(model, arch)
    batch = random_batch(arch.vocab, args.batch, args.length).to(args.device)
    attribute_batch(probe, random_batch(arch.vocab, 1, 8).to(args.device), config)  # warm-up
    wide = ModelProbe(model, arch)
    wide.activation_dtype = torch.float32  # the same model, activations held in float32 (as before)
    ways = {
        "ours": lambda: attribute_batch(probe, batch, config),
        "floor": lambda: floor_pass(probe, batch, args.steps),
    }
    if args.precision != "fp32":
        ways["ours-fp32-activations"] = lambda: attribute_batch(wide, batch, config)
    if not args.skip_slow:
        ways["slow"] = lambda: reference_scores(model, batch, config)
    runs = {name: [] for name in ways}
    measure = measured_cuda if args.device == "cuda" else measured
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits every way alike
        for name, way in ways.items():
            runs[name].append(measure(way))
    (ours_s, ours_m), (floor_s, floor_m) = summary(runs["ours"]), summary(runs["floor"])
    buffer = difference_buffer_bytes(arch, args.batch, args.length, DTYPES[args.precision])
    bound = MEMORY_SLACK * (floor_m + buffer)
    line = (
        f"{shape} ({arch.layers} layers, d={arch.d_model}, {probe.graph.n_edges} edges) {args.precision} on "
        f"{args.device}, batch {args.batch}x{args.length}, "
        f"median of {args.repeats}, "
        f"m={args.steps}: ours {ours_s:.2f}s / {ours_m / 2**20:.0f} MiB; "
        f"floor {floor_s:.2f}s / {floor_m / 2**20:.0f} MiB; difference buffer {buffer / 2**20:.0f} MiB; "
        f"time ours/floor {ours_s / floor_s:.2f}; peak ours/bound {ours_m / bound:.2f} "
        f"(bound {MEMORY_SLACK} x (floor + buffer) = {bound / 2**20:.0f} MiB)"
    )
    if "ours-fp32-activations" in runs:
        wide_s, wide_m = summary(runs["ours-fp32-activations"])
        line += (f"; ours with fp32 activations {wide_s:.2f}s / {wide_m / 2**20:.0f} MiB, "
                 f"peak memory ours/fp32-activations {ours_m / max(wide_m, 1):.2f}")  # fmt: skip
    if not args.skip_slow:
        slow_s, slow_m = summary(runs["slow"])
        line += (
            f"; slow {slow_s:.2f}s / {slow_m / 2**20:.0f} MiB; time slow/ours {slow_s / ours_s:.2f}, "
            f"peak memory ours/slow {ours_m / max(slow_m, 1):.2f}"
        )
    return line


if __name__ == "__main__":
    main()
