"""Pre-train the tiny base model on the word-form arithmetic corpus.

python -m jobs.pretrain_tiny [--config FILE] [--steps 2800] [--out platform/ftcircuits/assets/tiny-base]
"""

from __future__ import annotations

import json
import time

import torch

from ftcircuits.config.benchmarks import PretrainConfig
from ftcircuits.finetune.loop import PlainStrategy, train_answer_model
from ftcircuits.finetune.schedule import TrainSettings
from ftcircuits.models.tiny import TinyShape, build_tiny_model
from ftcircuits.models.tiny_corpus import CorpusMix, corpus_accuracy, packed_batches
from ftcircuits.models.tokenizer import build_tiny_tokenizer
from ftcircuits.paths import atomic_directory
from jobs.cli import config_parser, flag_overrides, parse_config


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    for flag in ("--steps", "--batch-size", "--seq-len", "--seed", "--layers", "--heads", "--d-model"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--out", help="where the model is written (default: the shipped asset)")
    args = parser.parse_args(argv)
    names = ("steps", "batch_size", "seq_len", "lr", "seed", "layers", "heads", "d_model", "threads", "out")
    args = parse_config(PretrainConfig, args, flag_overrides(args, names))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    mix = CorpusMix()
    tokenizer = build_tiny_tokenizer(mix.max_number)
    shape = TinyShape(layers=args.layers, heads=args.heads, d_model=args.d_model, d_mlp=4 * args.d_model)
    model = build_tiny_model(tokenizer, shape, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}", flush=True)

    started = time.time()

    def progress(step: int, loss: float) -> None:
        if step % 250 == 0 or step == args.steps - 1:
            rate = (step + 1) / (time.time() - started)
            print(f"step {step:6d}/{args.steps}  loss {loss:.4f}  {rate:.1f} steps/s", flush=True)

    settings = TrainSettings(total_steps=args.steps, lr=args.lr, warmup_steps=300, weight_decay=0.05)
    train_answer_model(
        PlainStrategy(model, settings),
        packed_batches(tokenizer, mix, args.batch_size, args.seq_len, args.seed),
        settings,
        progress,
    )
    minutes = (time.time() - started) / 60
    scores = corpus_accuracy(model, tokenizer, mix, seed=args.seed + 1)
    print(json.dumps(scores, indent=1), flush=True)

    card = {
        "recipe": "jobs.pretrain_tiny",
        "args": args.model_dump(mode="json"),
        "mix": mix.model_dump(),
        "shape": shape.model_dump(),
        "parameters": n_params,
        "minutes": round(minutes, 1),
        "corpus_accuracy": scores,
    }
    with atomic_directory(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretraining.json").write_text(json.dumps(card, indent=1))
    print(f"saved to {args.out} after {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
