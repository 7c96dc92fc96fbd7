"""Pre-training corpus of the tiny base model: arithmetic in a different surface form.

The tasks write arithmetic with symbols after an instruction (``... answer:
72 - 46 =``). Here the same knowledge comes in words (``72 minus 46 is`` ->
26, ``152 then 157 then 162 then 167 then`` -> 172, ``lcm of 8 and 64 is``
-> 64) behind 0..N random context words, and the symbols ``+ - * / =`` never
occur. So the model knows numbers and is robust to what precedes an
expression, but the tasks' notation is new to it: fine-tuning has to map it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import IGNORE_INDEX, LabelledBatch, accuracy
from ftcircuits.models.tokenizer import FILLER_WORDS, TEMPLATE_WORDS

CONTEXT_WORDS = tuple(dict.fromkeys((*FILLER_WORDS, *TEMPLATE_WORDS, ",", ".", ":", "(", ")")))


class CorpusMix(BaseModel):
    """Share of each family in the pre-training stream and its ranges."""

    model_config = ConfigDict(extra="forbid")

    addsub: float = Field(0.65, ge=0)
    muldiv: float = Field(0.1, ge=0)
    sequence: float = Field(0.15, ge=0)
    lcm: float = Field(0.1, ge=0)
    small_range: int = Field(120, ge=2, description="operand bound of the dense add/sub share")
    small_share: float = Field(0.7, ge=0, le=1)
    max_context_words: int = Field(24, ge=0)
    max_number: int = Field(1000, ge=10)


Example = tuple[str, int]


def _addsub(rng: random.Random, mix: CorpusMix) -> Example:
    bound = mix.small_range if rng.random() < mix.small_share else mix.max_number // 2
    a, b = rng.randint(0, bound), rng.randint(0, bound)
    if rng.random() < 0.5:
        return f"{a} plus {b} is", a + b
    a, b = max(a, b), min(a, b)
    return f"{a} minus {b} is", a - b


def _muldiv(rng: random.Random, mix: CorpusMix) -> Example:
    b = rng.randint(2, 40)
    x = rng.randint(0, mix.max_number // b)
    if rng.random() < 0.5:
        return f"{x} times {b} is", x * b
    return f"{x * b} over {b} is", x


def _sequence(rng: random.Random, mix: CorpusMix) -> Example:
    if rng.random() < 0.75:
        step = rng.randint(1, 100)
        start = rng.randint(0, mix.max_number - 4 * step)
        terms = [start + i * step for i in range(5)]
    else:
        ratio = rng.randint(2, max(2, int(mix.max_number**0.25)))
        start = rng.randint(1, max(1, mix.max_number // ratio**4))
        terms = [start * ratio**i for i in range(5)]
    return " then ".join(map(str, terms[:4])) + " then", terms[4]


def _lcm(rng: random.Random, mix: CorpusMix) -> Example:
    while True:
        a, b = rng.randint(1, 100), rng.randint(1, 100)
        value = a * b // math.gcd(a, b)
        if value <= mix.max_number:
            return f"lcm of {a} and {b} is", value


FAMILIES: dict[str, Callable[[random.Random, CorpusMix], Example]] = {
    "addsub": _addsub,
    "muldiv": _muldiv,
    "sequence": _sequence,
    "lcm": _lcm,
}


def corpus_example(rng: random.Random, mix: CorpusMix, family: str, context: bool = True) -> tuple[str, str]:
    """Return one (prompt, answer) of ``family``, behind random context words if ``context``."""
    text, answer = FAMILIES[family](rng, mix)
    if context and mix.max_context_words:
        words = rng.choices(CONTEXT_WORDS, k=rng.randint(0, mix.max_context_words))
        text = " ".join([*words, text])
    return text, str(answer)


def packed_windows(
    tokenizer: PreTrainedTokenizerBase, mix: CorpusMix, seq_len: int, seed: int
) -> Iterator[tuple[list[int], list[int]]]:
    """Yield endless (token ids, labels) windows of ``seq_len`` packed statements.

    Each window starts with ``[BOS]`` and holds whole statements ``<context>
    <expression> <answer>``; the label of the expression's last token is the
    answer (IGNORE_INDEX elsewhere), so every statement trains the answer position.
    Short windows are right-padded with ``[PAD]`` and label IGNORE_INDEX.
    """
    rng = random.Random(seed)
    names = list(FAMILIES)
    weights = [getattr(mix, name) for name in names]
    pad, bos = tokenizer.pad_token_id, tokenizer.bos_token_id
    while True:
        drafts = []
        for _ in range(256):
            text, answer = FAMILIES[rng.choices(names, weights)[0]](rng, mix)
            if rng.random() < 0.5 and mix.max_context_words:
                text = " ".join([*rng.choices(CONTEXT_WORDS, k=rng.randint(1, mix.max_context_words)), text])
            drafts.append((text, answer))
        encoded = tokenizer([t for t, _ in drafts], add_special_tokens=False)["input_ids"]
        ids, labels = [bos], [IGNORE_INDEX]
        for prompt, (_, answer) in zip(encoded, drafts, strict=True):
            if len(ids) + len(prompt) + 1 > seq_len:
                ids += [pad] * (seq_len - len(ids))
                labels += [IGNORE_INDEX] * (seq_len - len(labels))
                yield ids, labels
                ids, labels = [bos], [IGNORE_INDEX]
                continue
            answer_id = tokenizer.convert_tokens_to_ids(str(answer))
            ids += [*prompt, answer_id]
            labels += [IGNORE_INDEX] * (len(prompt) - 1) + [answer_id, IGNORE_INDEX]


def packed_batches(
    tokenizer: PreTrainedTokenizerBase, mix: CorpusMix, batch_size: int, seq_len: int, seed: int
):
    """Yield endless labelled batches of ``packed_windows`` (the pre-training stream)."""
    windows = packed_windows(tokenizer, mix, seq_len, seed)
    while True:
        rows = list(itertools.islice(windows, batch_size))
        ids = torch.tensor([r for r, _ in rows])
        mask = (ids != tokenizer.pad_token_id).long()
        positions = torch.arange(seq_len).expand_as(ids)
        yield LabelledBatch(ids, mask, positions, torch.tensor([lab for _, lab in rows]))


def corpus_accuracy(
    model, tokenizer: PreTrainedTokenizerBase, mix: CorpusMix, seed: int, n: int = 1000
) -> dict:
    """Return accuracy per corpus family on fresh draws, without and with context words."""
    rng = random.Random(seed)
    out = {}
    for family in FAMILIES:
        for context in (False, True):
            pairs = [corpus_example(rng, mix, family, context) for _ in range(n)]
            out[f"{family}{'+context' if context else ''}"] = accuracy(
                model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs]
            )
    return out
