"""Every family's surface form is exactly the paper's, labels recompute, corruptions are as specified."""

from __future__ import annotations

import math
import random
import re

import pytest

from ftcircuits.encoding import answer_token_ids, prompt_ids
from ftcircuits.tasks import task_family
from ftcircuits.tasks.build import build_dataset

PREFIX = "Calculate the result of the following arithmetic expression and provide only the final answer: "
ARITH = re.compile(re.escape(PREFIX) + r"(\d+) ([-+*/]) (\d+) =$")
COMPOSED = re.compile(re.escape(PREFIX) + r"\((\d+) ([-+]) (\d+)\) ([*/]) (\d+) =$")
SEQUENCE = re.compile(r"Derive the following sequence: (\d+), (\d+), (\d+), (\d+),$")
LCM = re.compile(
    r"Calculate the least common multiple \(LCM\) of two numbers\. "
    r"LCM\((\d+), (\d+)\) = (\d+), LCM\((\d+), (\d+)\) =$"
)
FUNCTION = re.compile(r"There is a function y=(\d+)x\+(\d+)\. Given x=1,2,3,4, y=(\d+),(\d+),(\d+),$")


def ops(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def drafts(name: str, n: int = 300, **parameters):
    family = task_family(name, **parameters)
    rng = random.Random(7)
    return [family.draw(rng, kind) for kind in family.kinds() for _ in range(n // len(family.kinds()))]


@pytest.mark.parametrize("bound", [100, 500])
def test_addsub_form_label_and_operator_flip(bound):
    for d in drafts("addsub", range=bound):
        a, op, b = ARITH.match(d.prompt).groups()
        a, b = int(a), int(b)
        assert 1 <= a <= bound and 1 <= b <= bound
        assert d.answer == str(ops(a, op, b)) and op == d.kind
        if op == "-":
            assert a >= b
        ca, cop, cb = ARITH.match(d.corrupted_prompt).groups()
        assert (int(ca), int(cb)) == (a, b) and {op, cop} == {"+", "-"}
        assert d.corrupted_answer == str(ops(a, cop, b))


def test_muldiv_form_label_and_corruption():
    for d in drafts("muldiv"):
        a, op, b = ARITH.match(d.prompt).groups()
        a, b = int(a), int(b)
        ca, cop, cb = ARITH.match(d.corrupted_prompt).groups()
        assert cop == op and int(cb) == b
        if op == "*":
            assert 2 <= a <= 200 and 2 <= b <= 180 and d.answer == str(a * b)
            assert 2 <= int(ca) <= 99 and int(ca) != a
        else:
            assert a % b == 0 and 2 <= b <= 200 and 2 <= a // b <= 200 and d.answer == str(a // b)
            assert int(ca) % b == 0 and int(ca) != a


def test_sequence_form_label_and_corruption():
    seen = set()
    for d in drafts("sequence"):
        terms = [int(t) for t in SEQUENCE.match(d.prompt).groups()]
        corrupted = [int(t) for t in SEQUENCE.match(d.corrupted_prompt).groups()]
        if d.kind == "arithmetic":
            step = terms[1] - terms[0]
            assert 1 <= step <= 100 and 1 <= terms[0] <= 500
            assert all(terms[i + 1] - terms[i] == step for i in range(3))
            assert d.answer == str(terms[3] + step)
        else:
            ratio = terms[1] // terms[0]
            assert 2 <= ratio <= 10 and 1 <= terms[0] <= 10
            assert all(terms[i + 1] == terms[i] * ratio for i in range(3))
            assert d.answer == str(terms[3] * ratio)
        changed = [i for i in range(4) if corrupted[i] != terms[i]]
        assert len(changed) == 1 and changed[0] in (2, 3)
        assert 1 <= corrupted[changed[0]] - terms[changed[0]] <= 100
        seen.add(d.kind)
    assert seen == {"arithmetic", "geometric"}


def test_lcm_form_label_kinds_and_corruption():
    for d in drafts("lcm"):
        ea, eb, ev, qa, qb = map(int, LCM.match(d.prompt).groups())
        assert ev == lcm(ea, eb) and d.answer == str(lcm(qa, qb))
        g = math.gcd(qa, qb)
        if d.kind == "multiple":
            assert max(qa, qb) % min(qa, qb) == 0
        elif d.kind == "coprime":
            assert g == 1
        else:
            assert g > 1 and max(qa, qb) % min(qa, qb) != 0
        ea2, eb2, ev2, ca, cb = map(int, LCM.match(d.corrupted_prompt).groups())
        assert (ea2, eb2, ev2) == (ea, eb, ev) and lcm(ca, cb) != lcm(qa, qb)
        assert d.corrupted_answer == str(lcm(ca, cb))


def test_function_form_label_and_corruption():
    for d in drafts("function"):
        a, b, y1, y2, y3 = map(int, FUNCTION.match(d.prompt).groups())
        assert 1 <= a <= 20 and 1 <= b <= 500
        assert (y1, y2, y3) == (a + b, 2 * a + b, 3 * a + b) and d.answer == str(4 * a + b)
        ca, cb, *_ = map(int, FUNCTION.match(d.corrupted_prompt).groups())
        assert ca == a and cb != b


def test_compositional_and_its_subtasks_come_from_the_same_draws():
    full, inner, outer = (drafts("compositional", part=p) for p in ("full", "inner", "outer"))
    for f, i, o in zip(full, inner, outer, strict=True):
        a, op1, b, op2, c = COMPOSED.match(f.prompt).groups()
        a, b, c = int(a), int(b), int(c)
        r = ops(a, op1, b)
        assert f.answer == str(ops(r, op2, c)) and (op2 == "*" or r % c == 0)
        ca, cop1, cb, cop2, cc = COMPOSED.match(f.corrupted_prompt).groups()
        assert (int(ca), cop1, int(cb), cop2) == (a, op1, b, op2) and int(cc) != c
        assert i.prompt == f"{PREFIX}{a} {op1} {b} =" and i.answer == str(r)
        assert o.prompt.startswith(f"{PREFIX}{r} {op2} ") and o.answer == str(
            ops(r, op2, int(o.prompt.split()[-2]))
        )


@pytest.mark.parametrize(
    "name,parameters",
    [
        ("addsub", {"range": 100}),
        ("addsub", {"range": 500}),
        ("muldiv", {}),
        ("sequence", {}),
        ("lcm", {}),
        ("function", {}),
        ("compositional", {"part": "full"}),
        ("compositional", {"part": "outer"}),
    ],
)
def test_built_items_have_one_token_answers_and_equal_lengths(tokenizer, name, parameters):
    items, counts = build_dataset(task_family(name, **parameters), tokenizer, 400, seed=3)
    prompts, corrupted = items["prompt"].to_list(), items["corrupted_prompt"].to_list()
    assert None not in answer_token_ids(tokenizer, prompts, items["answer"].to_list())
    clean_lengths = [len(x) for x in prompt_ids(tokenizer, prompts)]
    assert clean_lengths == [len(x) for x in prompt_ids(tokenizer, corrupted)]
    assert counts.kept == items.height
    assert counts.drawn >= counts.kept + counts.dropped_answer_not_one_token + counts.dropped_length_mismatch


def test_sequence_keeps_a_real_geometric_share(tokenizer):
    items, _ = build_dataset(task_family("sequence"), tokenizer, 1000, seed=0)
    share = (items["kind"] == "geometric").mean()
    assert share >= 0.2
    for split in ("finetune", "circuit"):
        part = items.filter(items["split"] == split)
        assert (part["kind"] == "geometric").mean() >= 0.18
