"""Fine-tuning on a real local Ray cluster: 2 CPU workers, DeepSpeed ZeRO-2, LoRA, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from ftcircuits.cluster.train import run_finetune
from ftcircuits.config.loading import load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.loader import load_model
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.tasks import build_dataset, task_family, write_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture()
def data_dir(tmp_path, tokenizer):
    """A 200-item Add/Sub-100 dataset."""
    items, _ = build_dataset(task_family("addsub", range=100), tokenizer, 200, seed=0)
    return write_dataset(tmp_path / "addsub-100", items, {"task": "addsub"})


def test_lora_on_two_workers_writes_reloadable_checkpoints_and_an_index(
    tmp_path, ray_cluster, model_dir, data_dir, tokenizer
):
    config = load_config(
        FinetuneConfig,
        None,
        [f"model={model_dir}", f"out={tmp_path / 'run'}", "method.name=lora", "method.r=4",
         "method.trainable_tokens=['+', '-', '=']", "train.epochs=2", "train.micro_batch_size=8",
         "train.grad_accumulation=1", "train.warmup_steps=2", "train.lr=0.005", "train.checkpoint_every=4"],
    )  # fmt: skip
    result, run_id = run_finetune(config, data_dir, max_failures=0)
    assert result.error is None
    index = read_checkpoint_index(tmp_path / "run")
    # 160 fine-tune items / (2 workers x 8) = 10 steps per epoch, 2 epochs: steps 0, 4, 8, 12, 16, 20
    assert index["step"].to_list() == [0, 4, 8, 12, 16, 20]
    assert math.isnan(index["train_loss"][0]) and index["train_loss"][-1] < index["train_loss"][1]
    states = sorted(p.parent.name for p in (tmp_path / "run" / "checkpoints").glob("step-*/engine_state"))
    assert states == ["step-000020"]  # only the newest checkpoint keeps the training state
    last = load_model(index["path"][-1])  # an adapter checkpoint, merged by the loader
    base = load_model(index["path"][0])
    ids = torch.tensor([tokenizer("Calculate the result of 5 + 3 =")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(last.model(ids).logits, base.model(ids).logits)

    from mlflow.tracking import MlflowClient

    from ftcircuits.tracking.mlflow_runs import tracking_uri

    client = MlflowClient(tracking_uri(tmp_path / "run"))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == "lora"
    accuracy = client.get_metric_history(run_id, "eval_accuracy")
    assert sorted(m.step for m in accuracy) == [0, 4, 8, 12, 16, 20]
    assert len(client.get_metric_history(run_id, "train_loss")) == 20
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/index.parquet"]


@pytest.mark.parametrize(
    "method",
    [
        ["method.name=adalora", "method.r=2", "method.adalora_init_r=4", "method.adalora_tinit=2",
         "method.adalora_tfinal=2", "method.adalora_delta_t=2", "deepspeed.zero_stage=0"],
        ["method.name=ia3", "train.lr=0.01"],
        ["method.name=fpft", "train.lr=0.001", "deepspeed.zero_stage=3"],
    ],
    ids=["adalora-zero0", "ia3", "fpft-zero3"],
)  # fmt: skip
def test_every_method_trains_on_two_workers(tmp_path, ray_cluster, model_dir, data_dir, tokenizer, method):
    import json

    config = load_config(
        FinetuneConfig,
        None,
        [f"model={model_dir}", f"out={tmp_path / 'run'}", "train.epochs=1", "train.micro_batch_size=8",
         "train.grad_accumulation=1", "train.warmup_steps=1", "train.checkpoint_every=5", *method],
    )  # fmt: skip
    result, _ = run_finetune(config, data_dir, max_failures=0)
    assert result.error is None
    index = read_checkpoint_index(tmp_path / "run")
    assert index["step"].to_list() == [0, 5, 10]
    assert index["train_loss"][-1] < index["train_loss"][1] * 1.5  # trained, not diverged
    last = load_model(index["path"][-1])  # loads (adapter merged, or full weights)
    ids = torch.tensor([tokenizer("Calculate the result of 5 + 3 =")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(last.model(ids).logits, load_model(str(model_dir)).model(ids).logits)
    if "method.name=adalora" in method:  # the budget was reallocated across workers' shared gradients
        pattern = json.loads((tmp_path / "run/checkpoints/step-000010/adapter_config.json").read_text())
        kept = [sum(mask) for mask in pattern["rank_pattern"].values()]
        assert kept and sum(kept) < 4 * len(kept)
