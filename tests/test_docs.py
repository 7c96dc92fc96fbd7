"""The README and docs/*.md: every relative link resolves, every anchor names a heading, the README is short.

A link is a markdown link ``[text](target)`` or image ``![alt](target)`` outside code; web (http, https),
mailto and pure ``#anchor`` links are not checked. A target resolves relative to the file that holds it;
``path.md#anchor`` must also name a heading of that file, by GitHub's slug rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def documents(root: Path = ROOT) -> list[Path]:
    """Return the README and every markdown file of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """Return the file's lines with fenced code blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def slug(heading: str) -> str:
    """Return GitHub's anchor of a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return the anchors of a markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Return every link target of a markdown file outside code blocks and code spans."""
    prose = "\n".join(prose_lines(path.read_text()))
    return LINK.findall(CODE_SPAN.sub("code", prose))


def broken_links(path: Path) -> list[str]:
    """Return each relative link of ``path`` that names no file, or an anchor no heading has."""
    broken = []
    for target in links(path):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        relative, _, anchor = target.partition("#")
        resolved = (path.parent / relative).resolve()
        if not resolved.exists():
            broken.append(f"{target} (no such file: {resolved})")
        elif anchor and resolved.suffix == ".md" and resolved.is_file() and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)} has broken links: " + "; ".join(broken)


def test_the_docs_exist():
    names = {path.name for path in documents()}
    assert {"tasks-and-models.md", "circuits.md", "finetuning.md", "cluster.md", "results.md"} <= names


def test_the_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Fine-tuning on Ray Train + DeepSpeed", "fine-tuning-on-ray-train--deepspeed"),
        ("Measuring on a GPU: `jobs.bench_gpu`", "measuring-on-a-gpu-jobsbench_gpu"),
        ("The tiny base model (the embedded default)", "the-tiny-base-model-the-embedded-default"),
        ("See [Results](docs/results.md)", "see-results"),
    ],
)
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_a_planted_broken_link_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Some heading\n\n```bash\n# not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        "# R\n\n[a](docs/a.md) [h](docs/a.md#some-heading) [web](https://example.com) [self](#r)\n"
        "`[in code](missing.md)`\n\n```\n[fenced](missing.md)\n```\n"
        "[gone](docs/missing.md) ![img](docs/missing.png)\n[bad anchor](docs/a.md#not-a-heading)\n"
    )
    assert documents(tmp_path) == [tmp_path / "README.md", tmp_path / "docs" / "a.md"]
    broken = broken_links(tmp_path / "README.md")
    assert [entry.split(" ")[0] for entry in broken] == [
        "docs/missing.md",
        "docs/missing.png",
        "docs/a.md#not-a-heading",
    ]
    assert broken_links(tmp_path / "docs" / "a.md") == []
