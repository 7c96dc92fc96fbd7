"""A self-contained HTML report: sections of text, figures (PNG, embedded) and tables, then an appendix.

A pure renderer: the caller builds a ``Report`` and ``render_report`` writes one HTML file that needs
nothing else (figures are ``data:image/png;base64`` URLs, the CSS and a tiny load check are inline).
"""

from __future__ import annotations

import base64
import html
import numbers
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
from markdown_it import MarkdownIt
from pydantic import BaseModel, ConfigDict, Field

from ftcircuits.paths import atomic_file

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "mlflow", "polars", "ftcircuits")
NOT_INSTALLED = "not installed"

CSS = """
body { max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       font: 17px/1.55 Georgia, "DejaVu Serif", serif; }
h1, h2, h3, h4, nav, figcaption, table, .subtitle { font-family: system-ui, "DejaVu Sans", sans-serif; }
h1 { margin-bottom: 0.2rem; }
.subtitle { margin-top: 0; color: #555; }
nav { background: #fafafa; border: 1px solid #ddd; padding: 0.5rem 1.2rem; }
nav h2 { font-size: 1.1rem; margin: 0.5rem 0; }
section { margin-top: 2.5rem; }
figure { margin: 1.5rem 0; text-align: center; }
img { max-width: 100%; height: auto; }
figcaption, caption { font-size: 0.9rem; color: #444; text-align: left; margin: 0.4rem 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.6rem; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
""".strip()

# Once the page has loaded, record how many figures decoded (body data-images-loaded), each image's decoded
# size (data-natural-width/-height) and the page's content height, for a headless browser's DOM dump.
LOAD_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll("figure img"));
  images.forEach(function (img) {
    img.dataset.naturalWidth = img.naturalWidth;
    img.dataset.naturalHeight = img.naturalHeight;
  });
  document.body.dataset.imagesLoaded = images.filter(function (img) {
    return img.complete && img.naturalWidth > 0;
  }).length;
  document.body.dataset.pageHeight = Math.ceil(document.documentElement.getBoundingClientRect().height);
});
""".strip()

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")  # raw HTML escaped


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Figure(_Model):
    """A PNG file and its caption; ``alt`` (the image's alternative text) defaults to the caption."""

    path: Path
    caption: str
    alt: str | None = None


class Table(_Model):
    """Rows (a polars DataFrame, or dicts whose keys are the columns) and a caption; floats are shown to
    ``significant`` digits (never fewer than their integer digits), or as given when it is None."""

    rows: pl.DataFrame | list[dict[str, Any]]
    caption: str
    significant: int | None = Field(3, ge=1)


class ReportSection(_Model):
    """One section: its title, text (paragraphs of simple markdown; raw HTML is shown as text), then its
    figures and tables."""

    title: str
    text: str = ""
    figures: list[Figure] = Field(default_factory=list)
    tables: list[Table] = Field(default_factory=list)


class Appendix(_Model):
    """What reproduces the study: the exact configs (name -> YAML/JSON text), the seeds (what they seed ->
    the values) and the package versions (name -> version)."""

    configs: dict[str, str] = Field(default_factory=dict)
    seeds: dict[str, list[int]] = Field(default_factory=dict)
    package_versions: dict[str, str] = Field(default_factory=dict)


class Report(_Model):
    """The whole report: a title, a subtitle, its sections in order and the appendix."""

    title: str
    subtitle: str = ""
    sections: list[ReportSection] = Field(default_factory=list)
    appendix: Appendix = Field(default_factory=Appendix)


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Return each distribution's installed version, or ``"not installed"``."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = NOT_INSTALLED
    return found


def png_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) in pixels from a PNG's header."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def format_cell(value: Any, significant: int | None = 3) -> str:
    """Format one table cell as text (not yet escaped): floats to ``significant`` digits but never fewer
    than their integer digits (1234.5 -> 1235, not 1.23e+03), lists joined by commas, None empty."""
    if value is None:
        return ""
    if (
        significant is not None
        and isinstance(value, numbers.Real)
        and not isinstance(value, numbers.Integral)
    ):
        text = f"{float(value):.{significant}g}"  # numpy floats too
        return f"{float(value):.0f}" if "e+" in text and abs(value) < 1e15 else text
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(v, significant) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _columns_and_rows(rows: pl.DataFrame | Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    if isinstance(rows, pl.DataFrame):
        return rows.columns, [list(row) for row in rows.iter_rows()]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, [[row.get(column) for column in columns] for row in rows]


def _table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str,
                significant: int | None, anchor: str = "") -> str:  # fmt: skip
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{html.escape(format_cell(v, significant))}</td>'
            if _is_number(v)
            else f"<td>{html.escape(format_cell(v, significant))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{max(len(columns), 1)}">(no rows)</td></tr>')
    ident = f' id="{anchor}"' if anchor else ""
    return (f"<table{ident}><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")  # fmt: skip


def _read_figures(report: Report) -> dict[Path, bytes]:
    """Every figure's bytes, read before anything is written; missing or non-PNG files are one error."""
    paths = list(dict.fromkeys(f.path for s in report.sections for f in s.figures))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"figure file(s) not found: {', '.join(missing)}")
    data = {p: p.read_bytes() for p in paths}
    not_png = [str(p) for p, d in data.items() if d[:8] != PNG_SIGNATURE]
    if not_png:
        raise ValueError(f"figure file(s) are not PNG: {', '.join(not_png)}")
    return data


def report_html(report: Report) -> str:
    """Return the report as one self-contained HTML document (figures read from disk and embedded)."""
    figures = _read_figures(report)
    esc = html.escape
    contents, body = [], []
    n_figure = n_table = 0
    for i, section in enumerate(report.sections, start=1):
        anchor = f"section-{i}"
        contents.append(f'<li><a href="#{anchor}">{esc(section.title)}</a></li>')
        parts = [f'<section id="{anchor}"><h2>{i}. {esc(section.title)}</h2>']
        if section.text.strip():
            parts.append(_MARKDOWN.render(section.text))
        for figure in section.figures:
            n_figure += 1
            data = figures[figure.path]
            width, height = png_size(data)
            alt = figure.alt if figure.alt is not None else figure.caption
            parts.append(
                f'<figure id="figure-{n_figure}"><img src="data:image/png;base64,'
                f'{base64.b64encode(data).decode("ascii")}" alt="{esc(alt)}" '
                f'width="{width}" height="{height}">'
                f"<figcaption><b>Figure {n_figure}.</b> {esc(figure.caption)}</figcaption></figure>"
            )
        for table in section.tables:
            n_table += 1
            columns, rows = _columns_and_rows(table.rows)
            caption = f"<b>Table {n_table}.</b> {esc(table.caption)}"
            parts.append(_table_html(columns, rows, caption, table.significant, f"table-{n_table}"))
        parts.append("</section>")
        body.append("\n".join(parts))
    body.append(_appendix_html(report.appendix))
    contents.append('<li><a href="#appendix">Appendix</a></li>')
    subtitle = f'<p class="subtitle">{esc(report.subtitle)}</p>' if report.subtitle else ""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(report.title)}</title>",
        f"<style>\n{CSS}\n</style></head>",
        f'<body data-figures="{n_figure}">',
        f"<header><h1>{esc(report.title)}</h1>{subtitle}</header>",
        f'<nav id="contents"><h2>Contents</h2><ol>{"".join(contents)}</ol></nav>',
        "<main>",
        *body,
        "</main>",
        f"<script>\n{LOAD_CHECK}\n</script>",
        "</body></html>",
        "",
    ])  # fmt: skip


def _appendix_html(appendix: Appendix) -> str:
    esc = html.escape
    parts = ['<section id="appendix"><h2>Appendix</h2>']
    if appendix.configs:
        parts.append('<h3 id="appendix-configs">Configurations</h3>')
        for name, text in appendix.configs.items():
            parts.append(f"<h4>{esc(name)}</h4><pre>{esc(text)}</pre>")
    if appendix.seeds:
        rows = [[name, ", ".join(str(s) for s in seeds)] for name, seeds in appendix.seeds.items()]
        parts.append('<h3 id="appendix-seeds">Seeds</h3>')
        parts.append(_table_html(["seeded", "seeds"], rows, "The seeds used.", None))
    if appendix.package_versions:
        rows = [[name, v] for name, v in appendix.package_versions.items()]
        parts.append('<h3 id="appendix-versions">Package versions</h3>')
        parts.append(_table_html(["package", "version"], rows, "The installed versions.", None))
    parts.append("</section>")
    return "\n".join(parts)


def render_report(report: Report, out: Path) -> Path:
    """Write ``report`` as one self-contained HTML file at ``out`` (atomically: a missing or unreadable
    figure raises before anything is written, leaving any earlier file at ``out`` as it was)."""
    text = report_html(report)
    out = Path(out)
    with atomic_file(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
