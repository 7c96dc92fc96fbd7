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

import ctypes
import os
import threading
import time
from collections.abc import Callable

import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.memory import MEMORY_SLACK, difference_buffer_bytes
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.reference import reference_scores
from ftcircuits.config.benchmarks import BenchEapConfig
from ftcircuits.encoding import pad_prompts
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.hooks import module_hooks
from ftcircuits.models.shapes import build_same_shape
from jobs.cli import config_parser, flag_overrides, parse_config

# Sized to finish in minutes on 2 CPU cores: full GPT-2 small; pythia-1.4b's width with 4 of its 24 layers.
DEFAULT_OVERRIDES = {"gpt2": {}, "pythia-1.4b-deduped": {"num_hidden_layers": 4}}


_LIBC = ctypes.CDLL("libc.so.6")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measured_cuda(fn: Callable[[], object]) -> tuple[float, int]:
    """Return (seconds, peak CUDA memory allocated above the start) of one call."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    began = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - began, torch.cuda.max_memory_allocated() - start


def measured(fn: Callable[[], object]) -> tuple[float, int]:
    """Return (seconds, peak RSS bytes above the start) of one call, sampling RSS every 2 ms.

    Freed heap is first handed back to the system (glibc ``malloc_trim``), so a
    run cannot hide its peak inside memory an earlier run left cached.
    """
    _LIBC.malloc_trim(0)
    start_rss, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - start_rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    fn()
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    return seconds, max(peak[0], _rss() - start_rss)


def summary(runs: list[tuple[float, int]]) -> tuple[float, int]:
    """Return the median seconds and the largest peak memory of repeated runs."""
    seconds = sorted(s for s, _ in runs)
    return seconds[len(seconds) // 2], max(m for _, m in runs)


def random_batch(vocab: int, batch: int, length: int, seed: int = 0) -> PairBatch:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, vocab, (batch, length), generator=gen)
    corrupted = clean.clone()
    corrupted[:, -2] = torch.randint(10, vocab, (batch,), generator=gen)
    padded = pad_prompts(clean.tolist(), pad_id=0)
    answers = torch.randint(10, vocab, (batch,), generator=gen)
    return PairBatch(padded, corrupted, answers, answers)


def floor_pass(probe: ModelProbe, batch: PairBatch, steps: int) -> None:
    """2 forwards without gradients + one stacked forward/backward of ``steps`` copies to the embeddings."""
    with torch.no_grad():
        clean_logits = probe.run(batch.clean)
        probe.run(batch.clean, batch.corrupted_ids)
    stacked = batch.clean.repeat(steps)
    embeds = probe.embed(stacked.input_ids).detach().requires_grad_(True)
    with module_hooks([(probe.embed, lambda m, i, o: embeds)]):
        loss = metric_loss("kl", probe.run(stacked), clean_logits.repeat(steps, 1), stacked.last_index).sum()
        torch.autograd.grad(loss, embeds)


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
