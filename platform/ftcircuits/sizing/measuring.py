"""Measuring one call: its seconds and peak memory above its start (allocated CUDA memory, or resident
memory sampled every 2 ms on CPU), the summary of repeated runs, and the work both EAP-IG benchmarks time
against ours: a random pair batch and the floor pass."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable

import torch

from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.encoding import pad_prompts
from ftcircuits.models.hooks import module_hooks

_LIBC = ctypes.CDLL("libc.so.6")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
