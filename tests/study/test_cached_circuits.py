"""A run's finished circuit units checked before reuse (``over_run.finished_circuit``), without Ray: a
damaged one raises naming it and how to redo it, or with rebuild is removed to be redone; one with a file
deleted is to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcircuits.circuits.io import circuit_files, write_circuit
from ftcircuits.integrity import DamagedFileError
from ftcircuits.study.over_run import METRICS, CircuitUnit, circuit_rebuild_hint, finished_circuit

UNIT = CircuitUnit("step-000300", "/run/checkpoints/step-000300", "checkpoint", 300)


@pytest.fixture()
def out(tmp_path, hand_built_circuit) -> Path:
    out = tmp_path / "run" / "circuits" / "abc123"
    edges = hand_built_circuit({("a0.h1", "logits"): 1.0}, background=None)
    write_circuit(out / UNIT.key, edges, {"faithfulness": dict.fromkeys(METRICS, 0.5)})
    return out


def test_a_whole_unit_gives_its_summary_row(out):
    row = finished_circuit(out, UNIT)
    assert row == {"key": "step-000300", "weights": "/run/checkpoints/step-000300", "model": "checkpoint",
                   "step": 300, "ratio": 0.0, **dict.fromkeys(METRICS, 0.5)}  # fmt: skip


@pytest.mark.parametrize("which", [0, 1])
def test_a_damaged_unit_raises_naming_the_file_and_how_to_redo_it(out, which):
    path = circuit_files(out / UNIT.key)[which]
    path.write_bytes(b"")
    with pytest.raises(DamagedFileError) as caught:
        finished_circuit(out, UNIT)
    assert str(caught.value) == (
        f"{path}: the file is empty (0 bytes); to rebuild it: rerun with --set rebuild=true, or delete "
        f"{path}: python -m jobs.circuits --run {out.parent.parent} (with the same --set settings; "
        "every job that runs this stage takes --set rebuild=true)"
    )
    assert caught.value.rebuild == circuit_rebuild_hint(out, path)
    assert finished_circuit(out, UNIT, rebuild=True) is None
    assert not any(p.exists() for p in circuit_files(out / UNIT.key))  # removed: the unit is redone


def test_a_json_without_the_metrics_is_damaged(out):
    _, meta_path = circuit_files(out / UNIT.key)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "faithfulness"}))
    with pytest.raises(DamagedFileError) as caught:
        finished_circuit(out, UNIT)
    assert (caught.value.path, caught.value.problem) == (
        meta_path,
        "its faithfulness metrics are missing or malformed (KeyError('faithfulness'))",
    )


@pytest.mark.parametrize("which", [0, 1])
def test_a_unit_with_a_file_deleted_is_to_do(out, which):
    circuit_files(out / UNIT.key)[which].unlink()
    assert finished_circuit(out, UNIT) is None


def test_a_later_summary_over_fewer_units_keeps_the_other_units_rows_whose_circuits_are_on_disk(
    out, hand_built_circuit
):
    from dataclasses import asdict

    import polars as pl

    from ftcircuits.study.over_run import SUMMARY_FILE, write_summary

    robust = CircuitUnit("base-p0.30", "base", "base", None, 0.3)
    gone = CircuitUnit("permuted-seed0-p0.30", "permuted-0", "permuted", None, 0.3)
    write_circuit(out / robust.key, hand_built_circuit({("a0.h1", "logits"): 1.0}), {})
    rows = {u.key: {**asdict(u), **dict.fromkeys(METRICS, 0.25)} for u in (UNIT, robust, gone)}
    write_summary(out, list(rows.values()))  # the first run: every unit (gone's circuit is not on disk)
    again = {**rows[UNIT.key], "faithfulness": 0.75}
    write_summary(out, [again])  # a later run over the checkpoints only (CircuitLoRA's reference circuits)
    summary = pl.read_parquet(out / SUMMARY_FILE)
    assert summary.to_dicts() == [rows[robust.key], again]  # sorted by model: base, checkpoint
