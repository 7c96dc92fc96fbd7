"""Time the explorer's interactions in headless Chromium: each one is dispatched from inside the page,
with ``performance.now()`` around its handler (which, with ``explorer.forceRaster``, also rasterises the
canvases) and again after the next animation frame, for ``jobs.bench_explorer``."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from ftcircuits.report.browser import open_page

# one interaction: wait for a frame, dispatch it, time the handler, then the next frame
INTERACTION = """
async ([kind, arg]) => {
  const frame = () => new Promise((done) => requestAnimationFrame(() => done()));
  await frame();
  const started = performance.now();
  if (kind === "click") {
    const point = explorer.nodePoint(arg);
    const canvas = document.querySelector("#view-b canvas");
    canvas.dispatchEvent(new MouseEvent("click", {clientX: point.x, clientY: point.y, bubbles: true}));
  } else {
    const id = kind === "slider" ? "#step" : kind === "side" ? "#side" : "#budget";
    const element = document.querySelector(id);
    if (kind === "side") element.checked = !element.checked; else element.value = String(arg);
    element.dispatchEvent(new Event(kind === "slider" ? "input" : "change", {bubbles: true}));
  }
  const handler = performance.now() - started;
  await frame();
  return {handler, frame: performance.now() - started, drawn: explorer.drawnEdges,
          panelRows: explorer.panelRows().length};
}
"""


def descendants_cpu_seconds(root: int | None = None) -> dict[str, float]:
    """Return the CPU time (user + system, s) of every live descendant process of ``root`` (default: this
    one), read from /proc (Linux): ``page`` (the page's renderer processes) and ``all`` (with the browser,
    GPU and UI processes and Playwright's driver); zeros where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[int, float, bool]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
            command = (entry.parent / "cmdline").read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        page = b"--type=renderer" in command and b"--top-chrome-webui" not in command
        processes[int(entry.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, page)
    found, frontier = set(), {os.getpid() if root is None else root}
    while frontier:
        frontier = {pid for pid, (parent, _, _) in processes.items() if parent in frontier} - found
        found |= frontier
    return {
        "page": sum(processes[pid][1] for pid in found if processes[pid][2]),
        "all": sum(processes[pid][1] for pid in found),
    }


def _timed(evaluate, kind: str, arg: object) -> dict:
    before = descendants_cpu_seconds()
    result = evaluate(INTERACTION, [kind, arg])
    after = descendants_cpu_seconds()
    return result | {f"cpu_{k}": 1000 * (after[k] - before[k]) for k in after}


def interaction_timings(page: Path, budget_index: int, node: str, repeats: int = 5) -> dict:
    """Return the page's load time (until ``explorer.ready``, ms) and, per interaction (slider move, budget
    change, node click, side-by-side toggle), the median and largest handler and to-next-frame times (ms),
    the mean CPU time around it (ms, with the call's round trip; /proc counts 10 ms ticks, so the mean) of the
    page's renderer and of all the browser's processes, and the edges drawn after it, over ``repeats`` rounds
    at the budget ``budget_index``."""
    with open_page(page) as opened:
        opened.page.wait_for_function("window.explorer && window.explorer.ready", timeout=120_000)
        evaluate = opened.page.evaluate
        load_ms = evaluate("explorer.readyMs")
        evaluate("explorer.forceRaster = true")  # the canvases rasterised inside the timed handler
        checkpoints = evaluate("explorer.checkpoints.length")
        budgets = evaluate("document.querySelector('#budget').options.length")
        evaluate(INTERACTION, ["budget", budget_index])
        runs: dict[str, list[dict]] = {"slider": [], "budget": [], "click": [], "side": []}
        for round_ in range(repeats):
            runs["slider"].append(_timed(evaluate, "slider", round_ % checkpoints))
            runs["budget"].append(_timed(evaluate, "budget", (budget_index + 1) % budgets))
            evaluate(INTERACTION, ["budget", budget_index])
            runs["click"].append(_timed(evaluate, "click", node))
            runs["side"].append(_timed(evaluate, "side", None))
            evaluate(INTERACTION, ["side", None])
        errors = list(opened.errors)
    timings = {
        kind: {
            "handler_ms": statistics.median(r["handler"] for r in rounds),
            "handler_max_ms": max(r["handler"] for r in rounds),
            "frame_ms": statistics.median(r["frame"] for r in rounds),
            "frame_max_ms": max(r["frame"] for r in rounds),
            "page_cpu_ms": statistics.mean(r["cpu_page"] for r in rounds),
            "browser_cpu_ms": statistics.mean(r["cpu_all"] for r in rounds),
            "drawn": rounds[-1]["drawn"],
        }
        for kind, rounds in runs.items()
    }
    return {"load_ms": load_ms, "interactions": timings, "console_errors": errors}
