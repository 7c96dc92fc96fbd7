"""A job given a ``RAY_ADDRESS`` where nothing answers exits 2 with one line naming the address and what
to check, before ``ray.init`` (the conftest guard fails any test here that reaches it)."""

from __future__ import annotations

import socket

import pytest

from ftcircuits.cluster.address import CONNECT_TIMEOUT_ENV
from ftcircuits.run_layout import RUN_CONFIG_FILE
from jobs import circuits, finetune
from tests.conftest import circuit_settings, circuits_of_run_args, dotted_overrides, small_finetune_config


@pytest.fixture()
def closed_address(monkeypatch) -> str:
    """``RAY_ADDRESS``, set to a local port where nothing listens (bound, read, closed), and a 1 s wait."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "1")
    return address


def one_error_line(capsys, address: str) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: nothing answers at the Ray cluster RAY_ADDRESS={address} within 1 s")
    assert f"ray status --address {address}" in line and "unset RAY_ADDRESS" in line
    return line


def test_circuits_of_a_run_exit_2_when_the_cluster_does_not_answer(
    closed_address, tiny_run, tmp_path, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    for part in (
        "checkpoints",
        "data",
        RUN_CONFIG_FILE,
    ):  # the run's inputs, not its circuits: nothing to reuse
        (run / part).symlink_to(tiny_run / part)
    settings = circuit_settings(8, 8, robustness=False, curve=False)
    with pytest.raises(SystemExit) as exit_:
        circuits.main(circuits_of_run_args(run, settings))
    assert exit_.value.code == 2
    one_error_line(capsys, closed_address)


def test_finetune_exits_2_when_the_cluster_does_not_answer(closed_address, model_dir, tmp_path, capsys):
    config = small_finetune_config(str(model_dir), str(tmp_path / "run"))
    with pytest.raises(SystemExit) as exit_:
        finetune.main([arg for value in dotted_overrides(config) for arg in ("--set", value)])
    assert exit_.value.code == 2
    one_error_line(capsys, closed_address)
