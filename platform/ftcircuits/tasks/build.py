"""Build a task dataset under a tokenizer: checks, dedupe, a strict split, perturbed variants."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import polars as pl
from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import answer_token_ids, prompt_ids
from ftcircuits.tasks.item import Draft, TaskFamily

COLUMNS = ("id", "prompt", "answer", "corrupted_prompt", "corrupted_answer", "kind", "split")


@dataclass
class BuildCounts:
    """What happened to the drafts while building a dataset."""

    drawn: int = 0
    kept: int = 0
    dropped_answer_not_one_token: int = 0
    dropped_length_mismatch: int = 0
    dropped_duplicate: int = 0
    short_of_target: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def stable_rng(*parts: object) -> random.Random:
    """Return a Random seeded from ``parts`` independently of Python's hash seed."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def checked_drafts(
    tokenizer: PreTrainedTokenizerBase, drafts: list[Draft], counts: BuildCounts
) -> list[tuple[Draft, bool]]:
    """Return drafts whose answer is one token and whose prompts have equal token length.

    Each kept draft comes with whether its corrupted answer is one token too.
    """
    prompts = [d.prompt for d in drafts]
    answers = answer_token_ids(tokenizer, prompts, [d.answer for d in drafts])
    corrupted_ids = prompt_ids(tokenizer, [d.corrupted_prompt for d in drafts])
    clean_ids = prompt_ids(tokenizer, prompts)
    corrupted_answers = answer_token_ids(
        tokenizer, [d.corrupted_prompt for d in drafts], [d.corrupted_answer or "" for d in drafts]
    )
    kept = []
    for i, draft in enumerate(drafts):
        if answers[i] is None:
            counts.dropped_answer_not_one_token += 1
        elif len(clean_ids[i]) != len(corrupted_ids[i]):
            counts.dropped_length_mismatch += 1
        else:
            kept.append((draft, draft.corrupted_answer is not None and corrupted_answers[i] is not None))
    return kept


def draw_items(
    family: TaskFamily,
    tokenizer: PreTrainedTokenizerBase,
    size: int,
    rng: random.Random,
    exclude: set[tuple[str, str]] | frozenset = frozenset(),
    exclude_prompts: set[str] | frozenset = frozenset(),
    max_draws_per_item: int = 60,
) -> tuple[list[dict], BuildCounts]:
    """Draw ``size`` checked items, unique by (prompt, corrupted prompt), in the family's kind shares.

    Pairs in ``exclude`` and prompts in ``exclude_prompts`` are never returned.
    A kind whose distribution cannot fill its share within the draw budget
    comes up short; the shortfall is recorded in ``counts.short_of_target``.
    """
    counts = BuildCounts()
    seen = set(exclude)
    rows: list[dict] = []
    shares = family.kinds()
    targets = _apportion(shares, size)
    for kind, target in targets.items():
        got, budget = 0, max_draws_per_item * target
        while got < target and budget > 0:
            chunk = min(budget, max(64, 2 * (target - got)))
            budget -= chunk
            drafts = [family.draw(rng, kind) for _ in range(chunk)]
            counts.drawn += chunk
            before = got
            for draft, corrupted_ok in checked_drafts(tokenizer, drafts, counts):
                key = (draft.prompt, draft.corrupted_prompt)
                if key in seen or draft.prompt in exclude_prompts:
                    counts.dropped_duplicate += 1
                    continue
                if got == target:
                    break
                seen.add(key)
                got += 1
                rows.append(
                    {
                        "prompt": draft.prompt,
                        "answer": draft.answer,
                        "corrupted_prompt": draft.corrupted_prompt,
                        "corrupted_answer": draft.corrupted_answer if corrupted_ok else None,
                        "kind": kind,
                    }
                )
            if got == before and chunk >= 256:
                break  # a whole chunk found nothing new: the distribution is exhausted
        if got < target:
            counts.short_of_target[kind] = target - got
    counts.kept = len(rows)
    return rows, counts


def _apportion(weights: dict[str, float], size: int) -> dict[str, int]:
    """Split ``size`` over the keys in proportion to ``weights`` (largest remainder, exact sum)."""
    total = sum(weights.values())
    exact = {key: size * weight / total for key, weight in weights.items()}
    counts = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: exact[key] - counts[key], reverse=True)
    for key in by_remainder[: size - sum(counts.values())]:
        counts[key] += 1
    return counts


def split_by_prompt(rows: list[dict], circuit_share: float, rng: random.Random) -> list[str]:
    """Assign each row to "finetune" or "circuit" so that no prompt is on both sides.

    Prompts (not rows) are shuffled and assigned per kind until the circuit
    side holds ``circuit_share`` of that kind's rows, so kind shares match
    across the split.
    """
    split = ["finetune"] * len(rows)
    by_kind: dict[str, dict[str, list[int]]] = {}
    for index, row in enumerate(rows):
        by_kind.setdefault(row["kind"], {}).setdefault(row["prompt"], []).append(index)
    sizes = {kind: sum(len(g) for g in groups.values()) for kind, groups in by_kind.items()}
    targets = _apportion(sizes, round(circuit_share * len(rows)))
    for kind, groups in by_kind.items():
        prompts = sorted(groups)
        rng.shuffle(prompts)
        target = targets[kind]
        taken = 0
        for prompt in prompts:
            if taken >= target:
                break
            for index in groups[prompt]:
                split[index] = "circuit"
            taken += len(groups[prompt])
    return split


def build_dataset(
    family: TaskFamily,
    tokenizer: PreTrainedTokenizerBase,
    size: int,
    seed: int,
    circuit_share: float = 0.2,
) -> tuple[pl.DataFrame, BuildCounts]:
    """Return the dataset (columns ``COLUMNS``) and its build counts, deterministic under ``seed``."""
    if size < 2:
        raise ValueError(f"dataset size must be at least 2, got {size}")
    rng = stable_rng(family.name, sorted(family.parameters().items()), seed)
    rows, counts = draw_items(family, tokenizer, size, rng)
    split = split_by_prompt(rows, circuit_share, rng)
    frame = pl.DataFrame(rows, schema=_SCHEMA).with_columns(
        pl.Series("split", split), pl.int_range(pl.len()).alias("id")
    )
    return frame.select(COLUMNS), counts


_SCHEMA = {
    "prompt": pl.String,
    "answer": pl.String,
    "corrupted_prompt": pl.String,
    "corrupted_answer": pl.String,
    "kind": pl.String,
}


def perturbed_circuit_splits(
    dataset: pl.DataFrame,
    family: TaskFamily,
    tokenizer: PreTrainedTokenizerBase,
    ratios: Sequence[float],
    seed: int,
) -> dict[float, pl.DataFrame]:
    """Return, per ratio, the circuit split with that share of its items replaced by fresh items.

    Fresh items come from the same family, kind by kind; none shares a prompt
    with the fine-tune split or repeats a (prompt, corrupted) pair of the
    dataset. The variants are nested: one random order of the circuit rows is
    drawn and ratio p replaces its first round(p * n) rows, each always by the
    same fresh item. Replaced rows keep their id and get ``perturbed=True``.
    Where a kind's distribution has too few fresh items (a small subtask),
    fewer rows are replaced; the ``perturbed`` column says which.
    """
    bad = [r for r in ratios if not 0 <= r <= 1]
    if bad:
        raise ValueError(f"perturbation ratios must be in [0, 1], got {bad}")
    if not ratios:
        return {}
    circuit = dataset.filter(pl.col("split") == "circuit")
    rows = circuit.drop("split").to_dicts()
    rng = stable_rng("perturb", family.name, sorted(family.parameters().items()), seed)
    order = rng.sample(range(len(rows)), len(rows))
    deepest = order[: round(max(ratios) * len(rows))]
    finetune_prompts = set(dataset.filter(pl.col("split") == "finetune")["prompt"])
    used = set(zip(dataset["prompt"], dataset["corrupted_prompt"], strict=True))
    fresh_by_kind: dict[str, list[dict]] = {}
    for kind, need in Counter(rows[i]["kind"] for i in deepest).items():
        pool, _ = draw_items(
            _SingleKind(family, kind), tokenizer, need, rng, exclude=used, exclude_prompts=finetune_prompts
        )
        fresh_by_kind[kind] = pool[::-1]
    replacement = {}
    for index in deepest:
        pool = fresh_by_kind[rows[index]["kind"]]
        if pool:
            replacement[index] = {**pool.pop(), "id": rows[index]["id"]}
    out = {}
    for ratio in ratios:
        chosen = set(order[: round(ratio * len(rows))]) & replacement.keys()
        variant = [replacement[i] if i in chosen else rows[i] for i in range(len(rows))]
        out[ratio] = (
            pl.DataFrame(variant, schema={**_SCHEMA, "id": pl.Int64})
            .with_columns(
                pl.lit("circuit").alias("split"),
                pl.Series("perturbed", [i in chosen for i in range(len(rows))]),
            )
            .select([*COLUMNS, "perturbed"])
        )
    return out


@dataclass(frozen=True)
class _SingleKind:
    """A family restricted to one of its kinds."""

    family: TaskFamily
    kind: str

    @property
    def name(self) -> str:
        return self.family.name

    def kinds(self) -> dict[str, float]:
        return {self.kind: 1.0}

    def parameters(self) -> dict:
        return self.family.parameters()

    def draw(self, rng: random.Random, kind: str) -> Draft:
        return self.family.draw(rng, kind)
