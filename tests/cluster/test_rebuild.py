"""A run's cached circuits on a real local Ray: a damaged one stops the stage, ``--set rebuild=true`` or
deleting either of its files redoes that unit only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ftcircuits.circuits.io import circuit_files, read_circuit
from ftcircuits.study.over_run import circuit_rebuild_hint
from jobs import circuits as circuits_job
from tests.conftest import circuit_settings, circuits_of_run_args

KEYS = [f"step-{step:06d}" for step in (0, 3, 6, 9)]  # the tiny run's checkpoints


def times(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for key in KEYS for p in circuit_files(out / key)}


def redone(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {name for name in before if after[name] != before[name]}


@pytest.mark.ray
@pytest.mark.slow
def test_a_damaged_circuit_stops_the_stage_and_rebuild_or_deleting_it_redoes_only_it(
    tmp_path, ray_cluster, tiny_run, capsys
):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("circuits")))
    args = circuits_of_run_args(run, circuit_settings(4, 4, robustness=False, curve=False, actors=1))
    circuits_job.main(args)
    printed = capsys.readouterr()
    assert "4 circuits computed, 0 already on disk" in printed.out
    assert "circuits: 100%|##########| 4/4" in printed.err  # work to do: a progress bar
    (out,) = (run / "circuits").iterdir()
    edges, _ = circuit_files(out / "step-000003")
    first, _ = read_circuit(out / "step-000003")
    edges.write_bytes(edges.read_bytes()[:2000] if edges.stat().st_size > 2000 else b"\0")
    before = times(out)

    with pytest.raises(SystemExit) as stopped:
        circuits_job.main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {edges}: ") and err.count("\n") == 1
    assert err.endswith(f"; to rebuild it: {circuit_rebuild_hint(out, edges)}\n")
    assert times(out) == before

    circuits_job.main([*args, "--set", "rebuild=true"])
    assert "1 circuits computed, 3 already on disk" in capsys.readouterr().out
    after = times(out)
    assert redone(before, after) == {"step-000003.edges.parquet", "step-000003.json"}
    again, _ = read_circuit(out / "step-000003")
    assert again["in_circuit"].equals(first["in_circuit"])

    for key, deleted in (("step-000006", 1), ("step-000009", 0)):  # the JSON, then the edges table
        before = times(out)
        circuit_files(out / key)[deleted].unlink()
        circuits_job.main(args)
        assert "1 circuits computed, 3 already on disk" in capsys.readouterr().out
        assert redone(before, times(out)) == {f"{key}.edges.parquet", f"{key}.json"}
        read_circuit(out / key)

    circuits_job.main(args)  # all on disk: the summary says so, and no bar is drawn
    printed = capsys.readouterr()
    assert "0 circuits computed, 4 already on disk" in printed.out
    assert "circuits:" not in printed.out + printed.err
