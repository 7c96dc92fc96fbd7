"""jobs.circuitlora refuses what no plan could carry out, before the reference run or any Ray work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import circuitlora

ROOT = Path(__file__).resolve().parents[2]
PRESET = "jobs/configs/circuitlora-tiny.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("critical.k=6", "critical k=6 must be below the model's 6 layers"),
        ("ranks.lora_r=1", "no \\(r_o, r_c\\) with r_o < r_c matches uniform LoRA r=1"),
        ("finetune_config=jobs/configs/compare-tiny.yaml", "invalid config: .*arms: unknown field"),
    ],
)
def test_bad_input_stops_before_any_work(override, message, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        circuitlora.main(["--config", PRESET, "--set", override, "--set", f"out={out}"])
    assert not out.exists()  # nothing written: no reference run, no plan, no MLflow store
