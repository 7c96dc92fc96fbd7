"""A worker killed mid-run: Ray restarts the workers from the last checkpoint and the run still
ends at its planned step, with the same checkpoint index a clean run writes."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from ftcircuits.cluster.train import connect, run_finetune
from ftcircuits.config.loading import load_config
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.tasks import build_dataset, task_family, write_dataset
from ftcircuits.tracking.mlflow_runs import tracking_uri


@pytest.fixture(scope="module")
def ray_cluster():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def train_workers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_killed_worker_resumes_from_the_last_checkpoint(tmp_path, ray_cluster, small_model, tokenizer):
    model_dir = tmp_path / "base"
    small_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
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
    killed = None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and runner.is_alive():
        index_file = out / "checkpoints" / "index.parquet"
        if index_file.is_file() and 8 in read_checkpoint_index(out)["step"].to_list():
            workers = train_workers()
            if workers:
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
    # resumed, not restarted: the base (step 0) was evaluated once, and the steps between the last
    # checkpoint and the kill ran twice
    client = MlflowClient(tracking_uri(out))
    accuracy_steps = [m.step for m in client.get_metric_history(run_id, "eval_accuracy")]
    assert accuracy_steps.count(0) == 1
    assert 20 < len(client.get_metric_history(run_id, "train_loss")) < 40
