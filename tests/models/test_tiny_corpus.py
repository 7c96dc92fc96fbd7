"""The pre-training corpus: another surface form (no task symbols), correct labels, deterministic."""

from __future__ import annotations

import itertools
import random

from ftcircuits.models.tiny_corpus import FAMILIES, CorpusMix, corpus_example, packed_windows

TASK_SYMBOLS = {"+", "-", "*", "/", "="}


def test_corpus_never_uses_the_tasks_symbols(tokenizer):
    mix = CorpusMix()
    rng = random.Random(0)
    for family in FAMILIES:
        for _ in range(200):
            prompt, answer = corpus_example(rng, mix, family)
            assert not TASK_SYMBOLS & set(prompt.split())
            assert int(answer) <= mix.max_number


def test_word_form_answers_are_right():
    rng = random.Random(1)
    mix = CorpusMix(max_context_words=0)
    for _ in range(200):
        prompt, answer = corpus_example(rng, mix, "addsub", context=False)
        a, op, b, _ = prompt.split()
        assert int(answer) == (int(a) + int(b) if op == "plus" else int(a) - int(b))


def test_packed_windows_label_each_answer_at_its_expressions_last_token(tokenizer):
    mix = CorpusMix()
    windows = list(itertools.islice(packed_windows(tokenizer, mix, 64, seed=0), 20))
    for ids, labels in windows:
        assert len(ids) == len(labels) == 64 and ids[0] == tokenizer.bos_token_id
        positions = [t for t, label in enumerate(labels) if label != -100]
        assert positions
        for t in positions:
            assert ids[t + 1] == labels[t]  # the answer follows in the stream
            assert tokenizer.convert_ids_to_tokens(ids[t]) in {"is", "then"}
    again = list(itertools.islice(packed_windows(tokenizer, mix, 64, seed=0), 20))
    assert again == windows
