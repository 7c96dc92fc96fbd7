"""The tiny tokenizer: every integer 0..N is one token; a normal HF tokenizer on disk."""

from __future__ import annotations

from transformers import AutoTokenizer

from ftcircuits.models.tokenizer import build_tiny_tokenizer


def test_every_integer_up_to_the_bound_is_one_token(tokenizer):
    numbers = [str(n) for n in range(1001)]
    encoded = tokenizer(numbers, add_special_tokens=False)["input_ids"]
    assert all(len(ids) == 1 for ids in encoded)
    assert len({ids[0] for ids in encoded}) == 1001
    assert tokenizer.unk_token_id not in {ids[0] for ids in encoded}


def test_larger_numbers_split_into_pieces_not_unknown(tokenizer):
    ids = tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "12345"


def test_task_prompts_have_no_unknown_tokens(tokenizer):
    prompt = "There is a function y=5x+75. Given x=1,2,3,4, y=80,85,90,"
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids)[1:8] == ["There", "is", "a", "function", "y", "=", "5"]


def test_save_and_reload_tokenize_identically(tmp_path):
    small = build_tiny_tokenizer(50)
    small.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Calculate the least common multiple (LCM) of two numbers. LCM(20, 16) ="
    assert loaded(text)["input_ids"] == small(text)["input_ids"]
    assert loaded.pad_token == "[PAD]" and len(loaded) == len(small)
