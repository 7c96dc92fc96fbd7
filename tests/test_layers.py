"""The layers of README.md's table under "## Code map", kept by every module's imports (at module level and
inside functions alike). A package is a top-level module or package of platform/ftcircuits/ (``encoding.py``
is ``encoding``), jobs/ or tuning/; it imports (from ftcircuits, jobs or tuning) only itself and packages of
strictly lower layers (never a sibling of its layer); only cluster, jobs and tuning import ray; nothing
imports tests; every package of the tree has a row in the table."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = "platform/ftcircuits"
ENTRY_POINTS = ("jobs", "tuning")
RAY_IMPORTERS = {"cluster", "jobs", "tuning"}
RAY_RULE = "only cluster, jobs and tuning import ray"
HEADER = ["layer", "packages", "what they hold"]
PACKAGES = re.compile(r"`\w+`(, `\w+`)*")


class LayerTableError(ValueError):
    """README.md has no layer table under "## Code map", or a malformed one."""


def layer_table(readme: Path) -> dict[str, int]:
    """Return every package's layer, read from the table under "## Code map" in ``readme``."""
    lines = readme.read_text().splitlines() if readme.is_file() else []
    if "## Code map" not in lines:
        raise LayerTableError(f"{readme}: no '## Code map' section")
    section = lines[lines.index("## Code map") + 1 :]
    section = section[: next((i for i, line in enumerate(section) if line.startswith("## ")), len(section))]
    at = [i for i, line in enumerate(section) if line.startswith("|")]
    if len(at) < 3 or at != list(range(at[0], at[0] + len(at))):
        raise LayerTableError(f"{readme}: no table of header, rule and rows under '## Code map'")
    header, rule, *rows = [[cell.strip() for cell in section[i].strip().strip("|").split("|")] for i in at]
    if header != HEADER or len(rule) != 3 or not all(re.fullmatch(r":?-{3,}:?", c) for c in rule):
        raise LayerTableError(f"{readme}: the layer table's header is not | {' | '.join(HEADER)} |")
    layers: dict[str, int] = {}
    for row in rows:
        if len(row) != 3 or not row[0].isdigit() or not PACKAGES.fullmatch(row[1]):
            raise LayerTableError(f"{readme}: malformed row {row}: | layer | `package`, ... | text |")
        if layers and int(row[0]) <= max(layers.values()):
            raise LayerTableError(f"{readme}: layer {row[0]} is not ascending")
        for name in re.findall(r"`(\w+)`", row[1]):
            if name in layers:
                raise LayerTableError(f"{readme}: {name} is listed twice")
            layers[name] = int(row[0])
    return layers


def imported_modules(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """Return (line, module) of every import in a file, wherever it sits: relative imports resolved against
    ``package`` (the file's dotted package), and ``from ftcircuits import study`` read as ftcircuits.study."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *filter(None, [node.module])])
            if "." in module:
                found.append((node.lineno, module))
            else:  # from a top package (``from ftcircuits import study``), every name may be a module
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def package_path(relative: Path) -> Path:
    """Return the package a file belongs to, as a path: jobs, tuning, or a top-level entry of ftcircuits."""
    return Path(*relative.parts[: 1 if relative.parts[0] in ENTRY_POINTS else 3])


def broken_rule(package: str, module: str, layers: dict[str, int]) -> str | None:
    """Return the rule ``package`` breaks by importing ``module`` (None when it breaks none)."""
    top, *rest = module.split(".")
    if top == "ray":
        return None if package in RAY_IMPORTERS else RAY_RULE
    if top == "tests":
        return "nothing imports tests"
    target = rest[0] if top == "ftcircuits" and rest else top if top in ENTRY_POINTS else None
    if target in (None, package) or package not in layers:
        return None  # another project's module, its own package, or a package without a layer (reported once)
    if target not in layers:
        return f"{target} has no layer in README.md's table"
    if layers[target] == layers[package]:
        return f"{target} is a sibling of the same layer {layers[package]}"
    if layers[target] > layers[package]:
        return f"{target} is layer {layers[target]}, above {package}'s layer {layers[package]}"
    return None


def layer_violations(root: Path) -> list[str]:
    """Return one line per broken rule in the tree under ``root``, by README.md's layer table."""
    layers = layer_table(root / "README.md")
    patterns = (f"{LIB}/**/*.py", "jobs/**/*.py", "tuning/**/*.py")
    files = sorted(path.relative_to(root) for pattern in patterns for path in root.glob(pattern))
    files = [relative for relative in files if relative != Path(LIB, "__init__.py")]  # the root: no package
    bad = []
    for relative in files:
        package = package_path(relative).name.removesuffix(".py")
        dotted = [part for part in relative.with_suffix("").parts[:-1] if part != "platform"]
        for line, module in imported_modules(root / relative, dotted):
            if rule := broken_rule(package, module, layers):
                bad.append(f"{relative}:{line} {package} imports {module}: {rule}")
    for path in sorted({package_path(relative) for relative in files}):
        if (package := path.name.removesuffix(".py")) not in layers:
            bad.append(f"{path}: the package {package} has no layer in README.md's table")
    return bad


def test_the_tree_keeps_its_layers():
    assert layer_violations(ROOT) == []


LEAF_MODULES = {"options", "console", "encoding", "integrity", "paths", "run_layout", "schema", "storage"}
"""The packages that are files, not directories."""


def module_path(package: str) -> str:
    if package in ENTRY_POINTS:
        return f"{package}/planted.py"
    return f"{LIB}/{package}.py" if package in LEAF_MODULES else f"{LIB}/{package}/planted.py"


def plant(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A tree that keeps its layers: README.md's table; every package imports the first package of the layer
    below (a relative import inside a directory package); cluster, jobs and tuning import ray."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    layers = layer_table(tmp_path / "README.md")
    first = {layer: name for name, layer in reversed(layers.items())}
    for name, layer in layers.items():
        source = f"import ftcircuits.{first[layer - 1]}\n" if layer else "import os\n"
        source += "from . import planted\n" if module_path(name).endswith("/planted.py") else ""
        plant(tmp_path, module_path(name), source + ("import ray.train\n" if name in RAY_IMPORTERS else ""))
    return tmp_path


def test_a_tree_that_keeps_its_layers_has_no_violations(tree):
    assert layer_violations(tree) == []


# each statement is planted as line 6, after ``def f():`` and its first line: an indented one is inside f()
PLANTED = [  # per package of the table, an import of a package of a higher layer, of a sibling, or (at the
    # top layer) of a package the table does not place
    ("options", "import ftcircuits.encoding", "above"),
    ("integrity", "    from ftcircuits import options", "sibling"),
    ("console", "from ftcircuits.tracking.mlflow_runs import x", "above"),
    ("encoding", "    from ftcircuits import paths", "sibling"),
    ("paths", "from ftcircuits.tasks.families import x", "above"),
    ("run_layout", "    import ftcircuits.storage", "sibling"),
    ("schema", "from ftcircuits.config.training import x", "above"),
    ("storage", "    import ftcircuits.tracking", "above"),
    ("tasks", "from ftcircuits.models.loader import x", "sibling"),
    ("models", "    import ftcircuits.circuits", "above"),
    ("report", "from ftcircuits.tracking import x", "sibling"),
    ("tracking", "    from ..study import x", "above"),
    ("circuits", "from ..finetune.loop import x", "sibling"),
    ("finetune", "    from ftcircuits import config", "above"),
    ("config", "from ftcircuits.study import x", "above"),
    ("study", "    import ftcircuits.sizing.scale_plan", "sibling"),
    ("sizing", "from ftcircuits.cluster import x", "above"),
    ("cluster", "    from jobs.cli import x", "above"),
    ("jobs", "from tuning import sweep", "above"),
    ("tuning", "    from ftcircuits.nowhere import x", "nowhere has no layer"),  # top layer: none above
]
CASES = [
    *PLANTED,
    ("study", "import ray", RAY_RULE),
    ("sizing", "    from ray.util import x", RAY_RULE),
    ("jobs", "from tests.conftest import x", "nothing imports tests"),
    ("options", "    import tests.circuits", "nothing imports tests"),
]


def test_the_planted_cases_cover_every_package_of_the_table():
    assert [package for package, _, _ in PLANTED] == list(layer_table(ROOT / "README.md"))


@pytest.mark.parametrize(("package", "statement", "rule"), CASES, ids=[c[1].strip() for c in CASES])
def test_a_planted_violation_is_reported_once_with_its_line_and_rule(tree, package, statement, rule):
    plant(tree, module_path(package), f"import os\n\n\ndef f():\n    import re\n{statement}\n")
    (violation,) = layer_violations(tree)
    assert violation.startswith(f"{module_path(package)}:6 {package} imports ") and rule in violation


@pytest.mark.parametrize(
    ("relative", "package", "where"),
    [(f"{LIB}/newpkg/mod.py", "newpkg", f"{LIB}/newpkg"), (f"{LIB}/newmod.py", "newmod", f"{LIB}/newmod.py")],
)
def test_a_package_without_a_row_is_reported(tree, relative, package, where):
    plant(tree, relative, "import os\nimport ftcircuits.options\n")
    assert layer_violations(tree) == [f"{where}: the package {package} has no layer in README.md's table"]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda text: None, "no '## Code map' section"),
        (lambda text: text.replace("## Code map", "## Layout"), "no '## Code map' section"),
        (lambda text: re.sub(r"(?m)^\|.*\n", "", text.split("## Tasks")[0]), "no table"),
        (lambda text: text.replace("| layer | packages |", "| level | packages |"), "header"),
        (lambda text: text.replace("| 3 | `circuits`", "| three | `circuits`"), "malformed row"),
        (lambda text: text.replace("`study`, `sizing`", "study, sizing"), "malformed row"),
        (lambda text: text.replace("| 4 | `config` |", "| 4 | `config`, `models` |"), "models is listed"),
        (lambda text: text.replace("| 6 | `cluster`", "| 2 | `cluster`"), "not ascending"),
    ],
    ids=["no README", "no section", "no table", "header", "layer", "packages", "twice", "order"],
)
def test_a_missing_or_malformed_table_fails_loudly(tree, edit, error):
    readme = tree / "README.md"
    text = edit(readme.read_text())
    if text is None:
        readme.unlink()
    else:
        readme.write_text(text)
    with pytest.raises(LayerTableError, match=error):
        layer_violations(tree)
