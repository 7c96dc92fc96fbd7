"""Pre-train the tiny base model on the word-form arithmetic corpus.

python -m jobs.pretrain_tiny [--steps 2800] [--out platform/ftcircuits/assets/tiny-base]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ftcircuits.finetune.loop import PlainStrategy, TrainSettings, train_answer_model
from ftcircuits.models.tiny import TinyShape, build_tiny_model
from ftcircuits.models.tiny_corpus import CorpusMix, corpus_accuracy, packed_batches
from ftcircuits.models.tokenizer import build_tiny_tokenizer
from ftcircuits.paths import TINY_BASE_DIR, atomic_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=TINY_BASE_DIR)
    args = parser.parse_args()
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
        "args": {k: str(v) for k, v in vars(args).items()},
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
