"""Checkpoints checked before use: a run's index (its schema, its rows against the directories present), its
record, and each checkpoint's files (safetensors headers against the files' sizes, ``adapter_config.json``,
``config.json``). Each damage (truncated, empty, a wrong schema, content that does not match) raises one
DamagedFileError naming the file; the jobs that read checkpoints exit 2 with that one line, before Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save_file

from ftcircuits.config.loading import load_config
from ftcircuits.finetune.run_identity import run_record
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.integrity import DamagedFileError, check_safetensors
from ftcircuits.models.loader import check_model_files, load_model, model_rebuild
from ftcircuits.models.swap import CheckpointWeights
from ftcircuits.paths import TINY_BASE_DIR
from ftcircuits.run_layout import (
    check_run,
    checkpoint_path,
    finetune_rebuild,
    index_path,
    read_checkpoint_index,
    read_run_record,
    run_config_path,
    run_finished,
)
from jobs import analyze as analyze_job
from jobs import circuits as circuits_job
from jobs import finetune as finetune_job
from tests.conftest import TINY_RUN_STEPS, small_finetune_config

ADAPTER = "adapter_model.safetensors"


def copied_run(tiny_run: Path, where: Path) -> Path:
    """Return a copy of ``tiny_run`` whose index names the copy's own checkpoints."""
    run = Path(shutil.copytree(tiny_run, where / "run"))
    index = pl.read_parquet(index_path(run))
    index.with_columns(pl.col("path").str.replace(str(tiny_run), str(run), literal=True)).write_parquet(
        index_path(run)
    )
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's header JSON through ``edit`` (padded to its old length with spaces, as
    the format allows), leaving the tensor bytes as they are."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(edit(json.loads(data[8 : 8 + length])), separators=(",", ":")).encode()
    assert len(header) <= length
    path.write_bytes(data[:8] + header.ljust(length) + data[8 + length :])


def damage_message(error: pytest.ExceptionInfo, path: Path) -> str:
    assert error.value.path == path
    return error.value.problem


# -- safetensors headers -----------------------------------------------------------------------------


@pytest.fixture()
def weights_file(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.float16)}, str(path))
    return path


def test_a_whole_safetensors_file_passes_with_its_tensors(weights_file):
    tensors = check_safetensors(weights_file, "rebuild")
    assert {name: (t["dtype"], t["shape"]) for name, t in tensors.items()} == {
        "a": ("F32", [3, 4]),
        "b": ("F16", [5]),
    }


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated: 5 bytes, shorter than the 8-byte header"),
        (lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated or overwritten: the header length is"),
        (lambda p: p.write_bytes(p.read_bytes()[:-8]), "truncated: "),  # the header whole, the data cut
        (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 4), "trailing bytes: "),
        (lambda p: rewrite_header(p, lambda h: h | {"a": h["a"] | {"dtype": "F16"}}),
         "wrong schema: tensor 'a' (F16 [3, 4]) does not fit its data_offsets [0, 48]"),
        (lambda p: rewrite_header(p, lambda h: h | {"b": h["b"] | {"shape": [6]}}),
         "wrong schema: tensor 'b' (F16 [6]) does not fit its data_offsets [48, 58]"),
        (lambda p: rewrite_header(p, lambda h: h | {"a": {"dtype": "F32"}}),
         "wrong schema: tensor 'a' lacks a dtype, shape or [begin, end] data_offsets"),
        (lambda p: rewrite_header(p, lambda h: [1, 2]), "wrong schema: the safetensors header is not a"),
        (lambda p: p.write_bytes(p.read_bytes()[:8] + b"{not json" + p.read_bytes()[17:]),
         "wrong schema: the safetensors header is not JSON"),
    ],
    ids=["empty", "cut in the length", "cut in the header", "cut in the data", "trailing bytes", "dtype",
         "shape", "entry", "not an object", "not JSON"],
)  # fmt: skip
def test_a_damaged_safetensors_file_is_named_with_its_problem(weights_file, damage, problem):
    damage(weights_file)
    with pytest.raises(DamagedFileError) as error:
        check_safetensors(weights_file, "rebuild it so")
    assert damage_message(error, weights_file).startswith(problem)
    assert str(error.value) == f"{weights_file}: {error.value.problem}; to rebuild it: rebuild it so"


def test_the_size_check_states_both_sizes(weights_file):
    size = weights_file.stat().st_size
    weights_file.write_bytes(weights_file.read_bytes()[:-8])
    with pytest.raises(DamagedFileError) as error:
        check_safetensors(weights_file, "r")
    assert error.value.problem == f"truncated: {size - 8} bytes, its header describes {size}"


def test_a_missing_tensor_range_is_a_wrong_schema(tmp_path):
    path = tmp_path / "gap.safetensors"
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(path))
    rewrite_header(path, lambda h: {"b": h["b"]})  # a's bytes are still there, described by nothing
    with pytest.raises(DamagedFileError) as error:
        check_safetensors(path, "r")
    assert error.value.problem == "wrong schema: tensor 'b' starts at byte 8 of the data, expected 0"


# -- a checkpoint directory: adapter_config.json, config.json, weights ------------------------------


@pytest.fixture()
def run(tiny_run, tmp_path) -> Path:
    return copied_run(tiny_run, tmp_path)


def test_every_checkpoint_of_a_whole_run_passes(run):
    check_run(run)
    for step in TINY_RUN_STEPS:
        check_model_files(checkpoint_path(run, step))
    check_model_files(TINY_BASE_DIR)  # a full model: config.json and model.safetensors


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        (ADAPTER, truncate, "truncated"),
        (ADAPTER, lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        (ADAPTER, lambda p: p.unlink(), "the file is missing"),
        (ADAPTER, lambda p: p.write_bytes(p.read_bytes() + b"extra"), "trailing bytes"),
        ("adapter_config.json", truncate, "not valid JSON, truncated or overwritten"),
        ("adapter_config.json", lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        ("adapter_config.json", lambda p: p.write_text(json.dumps({"r": 4, "base_model_name_or_path": "x"})),
         "wrong schema: no key 'peft_type' (has ['base_model_name_or_path', 'r'])"),
        ("adapter_config.json", lambda p: p.write_text("[]"), "expected a JSON object, found list"),
    ],
    ids=["adapter truncated", "adapter empty", "adapter missing", "adapter longer", "config truncated",
         "config empty", "config without peft_type", "config a list"],
)  # fmt: skip
def test_a_damaged_adapter_checkpoint_is_named_with_its_run_rebuild(run, file, damage, problem):
    checkpoint = checkpoint_path(run, TINY_RUN_STEPS[-1])
    damage(checkpoint / file)
    with pytest.raises(DamagedFileError) as error:
        check_model_files(checkpoint)
    assert damage_message(error, checkpoint / file).startswith(problem)
    assert error.value.rebuild == finetune_rebuild(run)
    assert finetune_rebuild(run) == (
        f"delete the run directory {run} and rerun the job that fine-tuned it with the same config "
        "(python -m jobs.finetune --config ..., or the pipeline, comparison or CircuitLoRA job; "
        "finetune.json records it)"
    )


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("model.safetensors", truncate, "truncated"),
        ("model.safetensors", lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        ("config.json", truncate, "not valid JSON, truncated or overwritten"),
        ("config.json", lambda p: p.write_text("{}"), "wrong schema: no key 'model_type' (has [])"),
    ],
    ids=["weights truncated", "weights empty", "config truncated", "config without model_type"],
)
def test_a_damaged_full_model_is_named(tmp_path, file, damage, problem):
    model = Path(shutil.copytree(TINY_BASE_DIR, tmp_path / "model"))
    damage(model / file)
    with pytest.raises(DamagedFileError) as error:
        check_model_files(model)
    assert damage_message(error, model / file).startswith(problem)
    assert error.value.rebuild == f"save or download the model into {model} again"


def test_a_sharded_model_checks_each_shard_its_index_names(tmp_path):
    model = tmp_path / "sharded"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    for shard in ("model-1.safetensors", "model-2.safetensors"):
        save_file({shard: torch.zeros(2)}, str(model / shard))
    weight_map = {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-3.safetensors"}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(DamagedFileError) as error:
        check_model_files(model, "r")
    assert damage_message(error, model / "model-3.safetensors") == "the file is missing"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(DamagedFileError, match="its weight_map names no shard file"):
        check_model_files(model, "r")


def test_the_rebuild_of_the_shipped_model_and_a_directory_without_config(tmp_path):
    assert model_rebuild(TINY_BASE_DIR) == (
        f"git checkout -- {TINY_BASE_DIR}, or python -m jobs.pretrain_tiny --out {TINY_BASE_DIR}"
    )
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DamagedFileError) as error:
        check_model_files(tmp_path / "nothing", "r")
    assert damage_message(error, tmp_path / "nothing") == "holds neither adapter_config.json nor config.json"


def test_loading_or_swapping_in_a_damaged_checkpoint_names_it_before_reading_weights(run):
    base = read_run_record(run)["model"]
    checkpoint = checkpoint_path(run, TINY_RUN_STEPS[1])
    truncate(checkpoint / ADAPTER)
    with pytest.raises(DamagedFileError) as error:
        load_model(str(checkpoint))
    assert error.value.path == checkpoint / ADAPTER
    weights = CheckpointWeights(load_model(base))
    weights.swap_to(checkpoint_path(run, TINY_RUN_STEPS[2]))  # a whole one swaps in
    with pytest.raises(DamagedFileError) as error:
        weights.swap_to(checkpoint)
    assert error.value.path == checkpoint / ADAPTER and weights.current is None


# -- the checkpoint index and the run record ---------------------------------------------------------


def write_index(run: Path, frame: pl.DataFrame) -> None:
    frame.write_parquet(index_path(run))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (truncate, "not a readable parquet file, truncated or overwritten"),
        (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        (lambda p: write_index(p.parents[1], pl.read_parquet(p).drop("eval_accuracy")),
         "wrong schema: no column 'eval_accuracy' (has ['step', 'path', 'train_loss'])"),
        (lambda p: write_index(p.parents[1], pl.read_parquet(p).cast({"step": pl.String})),
         "wrong schema: column 'step' is String, expected Int64"),
        (lambda p: write_index(p.parents[1], pl.read_parquet(p).clear()), "no row: the index lists no"),
    ],
    ids=["truncated", "empty", "no column", "a column of another dtype", "no row"],
)  # fmt: skip
def test_a_damaged_index_is_named_by_every_reader(run, damage, problem):
    damage(index_path(run))
    for read in (read_checkpoint_index, run_finished, check_run):
        with pytest.raises(DamagedFileError) as error:
            read(run)
        assert damage_message(error, index_path(run)).startswith(problem)
        assert error.value.rebuild == finetune_rebuild(run)


def test_the_index_rows_are_checked_against_the_directories_present(run):
    shutil.rmtree(checkpoint_path(run, 3))
    shutil.rmtree(checkpoint_path(run, 9))
    with pytest.raises(DamagedFileError) as error:
        check_run(run)
    assert damage_message(error, index_path(run)) == (
        "lists checkpoints whose directories are missing: "
        f"step 3 ({checkpoint_path(run, 3)}), step 9 ({checkpoint_path(run, 9)})"
    )
    assert read_checkpoint_index(run)["step"].to_list() == list(TINY_RUN_STEPS)  # the table itself is whole


def test_an_index_row_naming_another_steps_directory_is_a_mismatch(run):
    index = pl.read_parquet(index_path(run))
    index = index.with_columns(pl.when(pl.col("step") == 6).then(pl.lit(str(checkpoint_path(run, 3))))
                               .otherwise(pl.col("path")).alias("path"))  # fmt: skip
    write_index(run, index)
    with pytest.raises(DamagedFileError) as error:
        check_run(run)
    assert damage_message(error, index_path(run)) == (
        f"the row of step 6 names the directory {checkpoint_path(run, 3)}, not one named step-000006"
    )


def test_a_damaged_run_record_is_named(run):
    run_config_path(run).write_text('{"model": ')
    with pytest.raises(DamagedFileError) as error:
        check_run(run)
    assert damage_message(error, run_config_path(run)).startswith("not valid JSON, truncated or overwritten")


def test_a_missing_index_is_still_no_run(tmp_path):
    assert not run_finished(tmp_path)
    with pytest.raises(FileNotFoundError, match="no fine-tuning run at"):
        read_checkpoint_index(tmp_path)


# -- the jobs: exit 2, one line naming the file, no traceback, before Ray ---------------------------


def circuits_job_error(run: Path, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        circuits_job.main(["--run", str(run), "--set", "robustness.enabled=false"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    (line,) = captured.err.splitlines()
    return line


@pytest.mark.parametrize(
    ("damaged", "damage", "problem"),
    [
        (lambda run: index_path(run), truncate, "not a readable parquet file, truncated or overwritten"),
        (lambda run: checkpoint_path(run, 6) / ADAPTER, truncate, "truncated"),
        (lambda run: checkpoint_path(run, 6) / "adapter_config.json",
         lambda p: p.write_text(json.dumps({"base_model_name_or_path": "x"})),
         "wrong schema: no key 'peft_type' (has ['base_model_name_or_path'])"),
        (lambda run: checkpoint_path(run, 9) / ADAPTER, lambda p: p.write_bytes(b""), "the file is empty"),
    ],
    ids=["index truncated", "safetensors truncated", "adapter_config without peft_type", "safetensors empty"],
)  # fmt: skip
def test_the_circuits_job_exits_2_naming_the_damaged_file(run, capsys, damaged, damage, problem):
    path = damaged(run)
    damage(path)
    line = circuits_job_error(run, capsys)
    assert line.startswith(f"error: {path}: {problem}")
    assert line.endswith(f"; to rebuild it: {finetune_rebuild(run)}")


def test_the_circuits_job_names_a_missing_checkpoint_directory(run, capsys):
    shutil.rmtree(checkpoint_path(run, 6))
    assert circuits_job_error(run, capsys) == (
        f"error: {index_path(run)}: lists checkpoints whose directories are missing: step 6 "
        f"({checkpoint_path(run, 6)}); to rebuild it: {finetune_rebuild(run)}"
    )


def test_the_circuits_job_of_one_model_exits_2_naming_its_damaged_weights(tiny_run, tmp_path, capsys):
    model = Path(shutil.copytree(TINY_BASE_DIR, tmp_path / "model"))
    (model / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        circuits_job.main(["--model", str(model), "--data", str(tiny_run / "data" / "addsub-100")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines() == [
        f"error: {model / 'model.safetensors'}: the file is empty (0 bytes); to rebuild it: save or download "
        f"the model into {model} again"
    ]


def test_the_circuits_job_checks_the_runs_base_model_too(tiny_run, tmp_path, capsys):
    base = Path(shutil.copytree(read_run_record(tiny_run)["model"], tmp_path / "base"))
    run = copied_run(tiny_run, tmp_path)
    run_config_path(run).write_text(json.dumps(read_run_record(tiny_run) | {"model": str(base)}))
    truncate(base / "model.safetensors")
    line = circuits_job_error(run, capsys)
    assert line.startswith(f"error: {base / 'model.safetensors'}: truncated")
    assert line.endswith(f"; to rebuild it: save or download the model into {base} again")


def test_the_finetune_job_exits_2_on_a_damaged_index_of_its_run_before_ray(tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(small_finetune_config("tiny", str(out))))
    config = load_config(FinetuneConfig, tmp_path / "run.yaml")
    index_path(out).parent.mkdir(parents=True)
    run_config_path(out).write_text(json.dumps(run_record(config, out / "data" / config.task.dataset_name())))
    index_path(out).write_bytes(b"PAR1 cut short")  # the same run, its index damaged: not retrained over
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        finetune_job.main(["--config", str(tmp_path / "run.yaml")])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {index_path(out)}: not a readable parquet file, truncated or overwritten")
    assert line.endswith(f"; to rebuild it: {finetune_rebuild(out)}")


def test_the_analyze_job_exits_2_naming_a_damaged_checkpoint(run, capsys):
    checkpoint = checkpoint_path(run, 3)
    (checkpoint / "adapter_config.json").write_bytes(b"")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        analyze_job.main(["--run", str(run), "--set", "robustness.enabled=false"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {checkpoint / 'adapter_config.json'}: the file is empty (0 bytes); to rebuild it: "
        f"{finetune_rebuild(run)}"
    ]
