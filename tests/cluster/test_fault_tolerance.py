"""A worker killed mid-run: Ray restarts the workers from the last checkpoint it registered and the run
still ends at its planned step, with the same checkpoint index a clean run writes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import psutil
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.cluster.train import run_finetune
from ftcircuits.config.loading import load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import RAY_DIR, read_checkpoint_index
from ftcircuits.tasks import build_dataset, task_family, write_dataset
from ftcircuits.tracking.mlflow_runs import tracking_uri

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def train_workers() -> list[psutil.Process]:
    """Return the Ray Train worker processes of this session's own cluster (started under this process,
    so never another cluster's on the machine)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def registered_step(out) -> int:
    """Return the step of the newest checkpoint Ray Train has registered (what restarted workers resume
    from; it can lag the run's own index), from Ray's checkpoint manager snapshot; -1 before any."""
    snapshot = out / RAY_DIR / out.name / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not written yet, or mid-write
        return -1
    return -1 if latest is None else int(latest["metrics"]["step"])


def test_killed_worker_resumes_from_the_last_checkpoint(tmp_path, ray_cluster, model_dir, tokenizer):
    items, _ = build_dataset(task_family("addsub", range=100), tokenizer, 200, seed=0)
    data_dir = write_dataset(tmp_path / "addsub-100", items, {"task": "addsub"})
    out = tmp_path / "run"
    config = load_config(
        FinetuneConfig,
        None,
        [f"model={model_dir}", f"out={out}", "method.name=lora", "method.r=4", "train.epochs=2",
         "train.micro_batch_size=8", "train.grad_accumulation=1", "train.warmup_steps=2",
         "train.checkpoint_every=4", "eval_batch_size=64"],
    )  # fmt: skip
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=run_finetune(config, data_dir, max_failures=2))
    )
    runner.start()
    killed = registered = None
    deadline = time.monotonic() + 240  # a wait for step 8's checkpoint, not a timing assertion
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        index_file = out / "checkpoints" / "index.parquet"
        if index_file.is_file() and 8 in read_checkpoint_index(out)["step"].to_list():
            workers = train_workers()
            if workers:
                registered = registered_step(out)  # Ray resumes from this checkpoint or a later one
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    runner.join(timeout=400)
    assert killed is not None, "the run ended before a worker could be killed"
    result, run_id = outcome["result"]
    assert result.error is None
    index = read_checkpoint_index(out)
    assert index["step"].to_list() == [0, 4, 8, 12, 16, 20]  # planned steps, each once
    assert index["train_loss"][-1] < index["train_loss"][1]
    # resumed, not restarted: the base (step 0) was evaluated once, and only the steps between the run's
    # newest indexed checkpoint (step 8 or later; Ray's registered one may lag it) and the kill ran twice
    client = MlflowClient(tracking_uri(out))
    accuracy_steps = [m.step for m in client.get_metric_history(run_id, "eval_accuracy")]
    assert accuracy_steps.count(0) == 1
    losses = Counter(m.step for m in client.get_metric_history(run_id, "train_loss"))
    assert set(losses) == set(range(1, 21)) and set(losses.values()) <= {1, 2}, losses
    rerun = sorted(step for step, count in losses.items() if count == 2)
    if rerun:  # none when the kill came right after a checkpoint
        resumed_at = rerun[0] - 1
        assert resumed_at % 4 == 0 and max(registered, 8) <= resumed_at <= 16, (registered, rerun)
        assert rerun == list(range(resumed_at + 1, resumed_at + 1 + len(rerun)))  # from there to the kill
