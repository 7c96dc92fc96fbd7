"""The layers, read from every module's imports (module level and inside functions alike).

Lowest first: the leaves (encoding, run_layout, options, paths, storage; they import only options), tasks
and models, then the engines circuits and finetune (never each other), then study, then cluster,
jobs and tuning.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path("platform/ftcircuits")
LIB = "platform/ftcircuits"  # planted paths below
LEAVES = {"encoding", "run_layout", "options", "paths", "storage"}
ORCHESTRATION = "study"
NEVER = {
    "tasks": {"circuits", "finetune", "cluster", ORCHESTRATION},
    "models": {"circuits", "finetune", "cluster", ORCHESTRATION},
    "circuits": {"finetune", "cluster", ORCHESTRATION},
    "finetune": {"circuits", "cluster", ORCHESTRATION},
}
RAY_ALLOWED = {"cluster"}  # in the library; jobs/ and tuning/ may import ray too


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Return (line, module) of every absolute import in a file, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layer_violations(root: Path) -> list[str]:
    """Return one line per import that breaks the layering rules, for the tree under ``root``."""
    bad = []
    library = root / LIBRARY
    for path in sorted(root.glob(f"{LIB}/**/*.py")):
        part = path.relative_to(library).parts[0].removesuffix(".py")
        for line, module in imported_modules(path):
            top, *rest = module.split(".")
            where = f"{path.relative_to(root)}:{line}"
            if top in ("jobs", "tuning", "tests"):
                bad.append(f"{where} the library imports {module}")
            if top == "ray" and part not in RAY_ALLOWED:
                bad.append(f"{where} {part} imports ray (only cluster/, jobs/ and tuning/ may)")
            if top != "ftcircuits" or not rest:
                continue
            if rest[0] in NEVER.get(part, set()):
                bad.append(f"{where} {part}/ imports {module}")
            if part in LEAVES and rest[0] not in (part, "options"):
                bad.append(f"{where} the leaf {part} imports {module}")
    for path in sorted([*root.glob("jobs/**/*.py"), *root.glob("tuning/**/*.py")]):
        for line, module in imported_modules(path):
            if module.split(".")[0] == "tests":
                bad.append(f"{path.relative_to(root)}:{line} imports {module}, which is not installed")
    return bad


def test_the_tree_keeps_its_layers():
    assert layer_violations(ROOT) == []


def plant(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        (f"{LIB}/circuits/bad.py", "from ftcircuits.finetune.loop import x\n", "circuits/ imports"),
        (f"{LIB}/models/bad.py", "def f():\n    import ftcircuits.finetune.encoding\n", "models/"),
        (f"{LIB}/tasks/bad.py", "from ftcircuits.study import over_run\n", "tasks/ imports"),
        (f"{LIB}/finetune/bad.py", "from ftcircuits.cluster.train import connect\n", "finetune/"),
        (f"{LIB}/circuits/bad.py", "import ray\n", "circuits imports ray"),
        (f"{LIB}/study/bad.py", "from jobs.cli import parse_config\n", "the library imports jobs"),
        (f"{LIB}/encoding.py", "from ftcircuits.models import loader\n", "the leaf encoding"),
        ("jobs/bad.py", "from tests.circuits import helpers\n", "imports tests.circuits"),
    ],
)
def test_a_planted_violation_is_reported(tmp_path, relative, source, expected):
    plant(tmp_path, f"{LIB}/cluster/ok.py", "import ray\nfrom ftcircuits.study import over_run\n")
    plant(tmp_path, "jobs/ok.py", "import ray\nfrom ftcircuits.cluster import train\n")
    assert layer_violations(tmp_path) == []
    plant(tmp_path, relative, source)
    (violation,) = layer_violations(tmp_path)
    assert violation.startswith(f"{relative}:") and expected in violation
