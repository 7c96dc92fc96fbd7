"""Strict split, determinism, perturbed variants, and dataset files."""

from __future__ import annotations

import polars as pl
import pytest

from ftcircuits.tasks import build_dataset, perturbed_circuit_splits, read_items, read_perturbed, task_family
from ftcircuits.tasks.io import MANIFEST_FILE, DatasetError, content_hash, read_manifest, write_dataset


@pytest.fixture(scope="module")
def addsub(tokenizer):
    items, _ = build_dataset(task_family("addsub", range=100), tokenizer, 1000, seed=0)
    return items


def test_split_is_80_20_and_no_prompt_is_on_both_sides(tokenizer, addsub):
    counts = dict(addsub.group_by("split").len().iter_rows())
    assert counts == {"finetune": 800, "circuit": 200}
    finetune = set(addsub.filter(pl.col("split") == "finetune")["prompt"])
    circuit = set(addsub.filter(pl.col("split") == "circuit")["prompt"])
    assert not finetune & circuit


def test_split_groups_repeated_prompts(tokenizer):
    items, _ = build_dataset(task_family("sequence"), tokenizer, 1000, seed=1)
    sides = items.group_by("prompt").agg(pl.col("split").n_unique())
    assert sides["split"].max() == 1
    assert items["prompt"].n_unique() < items.height  # geometric prompts repeat with other corruptions


def test_items_are_unique_pairs_and_kinds_balanced(addsub):
    assert addsub.select("prompt", "corrupted_prompt").is_unique().all()
    assert dict(addsub.group_by("kind").len().iter_rows()) == {"+": 500, "-": 500}


def test_same_seed_same_content_other_seed_other_content(tokenizer, addsub):
    again, _ = build_dataset(task_family("addsub", range=100), tokenizer, 1000, seed=0)
    other, _ = build_dataset(task_family("addsub", range=100), tokenizer, 1000, seed=1)
    assert content_hash(again) == content_hash(addsub)
    assert content_hash(other) != content_hash(addsub)


def test_perturbed_variants_replace_the_ratio_with_fresh_nested_items(tokenizer, addsub):
    family = task_family("addsub", range=100)
    variants = perturbed_circuit_splits(addsub, family, tokenizer, [0.1, 0.5, 0.9], seed=0)
    circuit = addsub.filter(pl.col("split") == "circuit")
    finetune_prompts = set(addsub.filter(pl.col("split") == "finetune")["prompt"])
    dataset_pairs = set(zip(addsub["prompt"], addsub["corrupted_prompt"], strict=True))
    for ratio, frame in variants.items():
        assert frame.height == circuit.height and frame["id"].to_list() == circuit["id"].to_list()
        assert frame["perturbed"].sum() == round(ratio * circuit.height)
        fresh = frame.filter(pl.col("perturbed"))
        assert not set(fresh["prompt"]) & finetune_prompts
        assert not set(zip(fresh["prompt"], fresh["corrupted_prompt"], strict=True)) & dataset_pairs
        kept = frame.filter(~pl.col("perturbed"))
        assert kept.drop("perturbed").equals(circuit.filter(pl.col("id").is_in(kept["id"].to_list())))
        assert (frame["kind"] == circuit["kind"]).all()
    low, high = (set(variants[r].filter(pl.col("perturbed"))["id"]) for r in (0.1, 0.9))
    assert low <= high


def test_write_read_round_trip_and_manifest(tmp_path, tokenizer, addsub):
    variants = perturbed_circuit_splits(addsub, task_family("addsub", range=100), tokenizer, [0.3], 0)
    directory = write_dataset(tmp_path / "addsub-100", addsub, {"task": "addsub"}, variants)
    assert read_items(directory).equals(addsub)
    assert read_items(directory, "circuit").height == 200
    assert read_perturbed(directory, 0.3)["perturbed"].sum() == 60
    manifest = read_manifest(directory)
    assert manifest["content_hash"] == content_hash(addsub) and "0.30" in manifest["perturbed"]
    with pytest.raises(DatasetError, match="ratio 0.50"):
        read_perturbed(directory, 0.5)
    with pytest.raises(DatasetError, match="split"):
        read_items(directory, "test")


def test_failed_write_leaves_the_old_dataset_whole(tmp_path, addsub):
    directory = write_dataset(tmp_path / "d", addsub, {"task": "addsub"})
    before = (directory / MANIFEST_FILE).read_text()
    with pytest.raises(TypeError):
        write_dataset(tmp_path / "d", addsub, {"task": object()})  # not JSON: fails mid-write
    assert (directory / MANIFEST_FILE).read_text() == before
    assert read_items(directory).equals(addsub)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="jobs.make_data"):
        read_items(tmp_path / "nothing")
