"""The main job (until the whole-study pipeline exists): data for every task, base accuracy,
a short full fine-tune on Add/Sub-100, accuracy after; then, with ``dynamics``, a fine-tuning
run on Ray + DeepSpeed, the circuits of all its checkpoints on Ray actors, and their analysis.

    python -m jobs.study [--config jobs/configs/tiny.yaml] [--set finetune.epochs=2]
"""

from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from ftcircuits.config.loading import load_config
from ftcircuits.config.study import DynamicsStage, StudyConfig
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.finetune.plain import optimiser_steps, plain_finetune
from ftcircuits.models.loader import load_model
from ftcircuits.paths import atomic_directory, atomic_file
from ftcircuits.report.figures import accuracy_bars
from ftcircuits.study.accuracy import circuit_split_accuracy, task_datasets
from ftcircuits.tasks.io import read_items
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = parse_config(StudyConfig, args)
    torch.set_num_threads(config.threads)
    started = time.time()
    loaded = load_model(config.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    print(f"model {loaded.source}: {loaded.architecture.layers} layers, {loaded.architecture.heads} heads")

    directories = task_datasets([*config.tasks, config.finetune_task], tokenizer, config.model,
                                config.out / "data")  # fmt: skip

    def accuracies() -> dict[str, float]:
        return circuit_split_accuracy(model, tokenizer, directories, config.eval_batch_size)

    base = accuracies()
    target = config.finetune_task.dataset_name()
    train = read_items(directories[target], "finetune")
    steps = optimiser_steps(train.height, config.finetune)
    bar = tqdm(total=steps, desc=f"fine-tune {target}", unit="step", mininterval=1.0)

    def progress(step: int, loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")

    losses = plain_finetune(
        model, tokenizer, train["prompt"].to_list(), train["answer"].to_list(), config.finetune, progress
    )
    bar.close()
    tuned = accuracies()

    print(f"\n{'task (circuit split)':24s} {'base':>7s} {'tuned':>7s}")
    for name in base:
        print(f"{name:24s} {100 * base[name]:6.1f}% {100 * tuned[name]:6.1f}%")
    results = {
        "model": loaded.source,
        "finetune_task": target,
        "finetune": config.finetune.model_dump(),
        "finetune_items": train.height,
        "loss_first_last": [losses[0], losses[-1]],
        "accuracy_base": base,
        "accuracy_finetuned": tuned,
        "minutes": round((time.time() - started) / 60, 2),
    }
    config.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(config.out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_directory(config.out / "finetuned") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    figure = accuracy_bars(
        {"base": base, f"fine-tuned on {target}": tuned}, config.out / "accuracy.png", "Tiny model accuracy"
    )
    print(f"\nresults: {config.out / 'results.json'}, figure: {figure} ({results['minutes']} min)")
    print(f"fine-tuned model: {config.out / 'finetuned'}")
    if config.dynamics is not None:
        circuit_dynamics(config.dynamics)


def circuit_dynamics(stage: DynamicsStage) -> None:
    """Run the fine-tuning preset, then circuits over its checkpoints, then their analysis (each a job)."""
    from jobs import analyze, circuits, finetune

    run = load_config(FinetuneConfig, stage.finetune_config).out
    overrides = [arg for value in stage.circuit_overrides for arg in ("--set", value)]
    print(f"\n== circuit dynamics: fine-tuning {stage.finetune_config} into {run}")
    finetune.main(["--config", str(stage.finetune_config)])
    print(f"\n== circuits of every checkpoint of {run}")
    circuits.main(["--run", str(run), *overrides])
    print(f"\n== analysis of {run}")
    analyze.main(["--run", str(run), *overrides])


if __name__ == "__main__":
    main()
