"""Tests for ftcircuits.report.html (one self-contained HTML file) and ftcircuits.report.screenshot (the
same file opened in headless Chromium)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest

from ftcircuits.report.html import (
    DEFAULT_PACKAGES,
    PNG_SIGNATURE,
    Appendix,
    Figure,
    Report,
    ReportSection,
    Table,
    format_cell,
    package_versions,
    png_size,
    render_report,
)
from ftcircuits.report.screenshot import INSTALL_HINT, dump_dom, find_chromium, screenshot

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG_SRC = re.compile(r'<img src="data:image/png;base64,([^"]+)"')


def _png(path: Path, inches: tuple[float, float], dpi: int = 100) -> Path:
    """A real matplotlib PNG of ``inches`` (width, height) at ``dpi``: (w*dpi, h*dpi) pixels."""
    fig, ax = plt.subplots(figsize=inches, dpi=dpi)
    ax.plot([0, 1, 2], [0, 1, 4])
    fig.savefig(path, format="png", dpi=dpi)
    plt.close(fig)
    return path


@pytest.fixture()
def figures(tmp_path) -> list[Path]:
    return [_png(tmp_path / "square.png", (2, 2)), _png(tmp_path / "wide.png", (3, 2))]


def _report(figures: list[Path]) -> Report:
    table = pl.DataFrame({"task": ["ioi", "greater-than"], "accuracy": [0.851234, 1234.56], "seeds": [3, 4]})
    return Report(
        title="How fine-tuning rewires circuits",
        subtitle="tiny models, three seeds",
        sections=[
            ReportSection(
                title="Accuracy",
                text="Fine-tuning **raises** accuracy.\n\nA second paragraph.",
                figures=[
                    Figure(path=figures[0], caption="Base vs fine-tuned", alt="bar chart"),
                    Figure(path=figures[1], caption="Per seed"),
                ],
                tables=[Table(rows=table, caption="Final accuracy")],
            ),
            ReportSection(
                title="Circuits",
                tables=[
                    Table(
                        rows=[{"edge": "a0.h1->m1", "score": 0.5}, {"edge": "m1->logits", "kept": True}],
                        caption="Edges",
                        significant=None,
                    )
                ],
            ),
        ],
        appendix=Appendix(
            configs={"study.yaml": "seeds: [42, 0, 1]\nlr: 0.001\n"},
            seeds={"fine-tuning": [42, 0, 1]},
            package_versions={"polars": "2.1.0", "ray": "not installed"},
        ),
    )


def _rows(doc: str, table_id: str) -> list[list[str]]:
    """The body cells of the table with this id, as text."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', doc, re.S).group(1)
    body = table.split("<tbody>")[1]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_render_embeds_each_figure_as_its_png_bytes(tmp_path, figures):
    out = render_report(_report(figures), tmp_path / "out" / "report.html")
    doc = out.read_text()
    assert out == tmp_path / "out" / "report.html"
    assert doc.count("<img") == 2
    assert [base64.b64decode(src) for src in IMG_SRC.findall(doc)] == [p.read_bytes() for p in figures]
    assert re.findall(r'alt="([^"]*)" width="(\d+)" height="(\d+)"', doc) == [
        ("bar chart", "200", "200"),
        ("Per seed", "300", "200"),  # alt defaults to the caption
    ]
    assert re.findall(r"<figcaption>(.*?)</figcaption>", doc) == [
        "<b>Figure 1.</b> Base vs fine-tuned",
        "<b>Figure 2.</b> Per seed",
    ]
    assert '<body data-figures="2">' in doc
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary left behind


def test_text_is_markdown_and_tables_format_numbers(tmp_path, figures):
    doc = render_report(_report(figures), tmp_path / "report.html").read_text()
    assert "<p>Fine-tuning <strong>raises</strong> accuracy.</p>\n<p>A second paragraph.</p>" in doc
    assert "<caption><b>Table 1.</b> Final accuracy</caption><thead><tr><th>task</th><th>accuracy</th>" in doc
    assert _rows(doc, "table-1") == [["ioi", "0.851", "3"], ["greater-than", "1235", "4"]]
    assert '<td class="num">0.851</td>' in doc
    # dicts: the union of their keys, a missing key an empty cell, floats as given when significant=None
    assert re.search(r'<table id="table-2">.*?<thead><tr>(.*?)</tr>', doc).group(1) == (
        "<th>edge</th><th>score</th><th>kept</th>"
    )
    assert _rows(doc, "table-2") == [["a0.h1-&gt;m1", "0.5", ""], ["m1-&gt;logits", "", "True"]]


def test_contents_and_appendix(tmp_path, figures):
    doc = render_report(_report(figures), tmp_path / "report.html").read_text()
    nav = re.search(r'<nav id="contents">(.*?)</nav>', doc).group(1)
    assert re.findall(r'<a href="#([^"]+)">([^<]+)</a>', nav) == [
        ("section-1", "Accuracy"), ("section-2", "Circuits"), ("appendix", "Appendix"),
    ]  # fmt: skip
    assert re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', doc) == [
        ("section-1", "1. Accuracy"), ("section-2", "2. Circuits"), ("appendix", "Appendix"),
    ]  # fmt: skip
    assert "<h4>study.yaml</h4><pre>seeds: [42, 0, 1]\nlr: 0.001\n</pre>" in doc
    assert "<tr><td>fine-tuning</td><td>42, 0, 1</td></tr>" in doc
    assert "<tr><td>polars</td><td>2.1.0</td></tr><tr><td>ray</td><td>not installed</td></tr>" in doc


def test_all_text_is_escaped(tmp_path, figures):
    report = Report(
        title=EVIL,
        subtitle=EVIL,
        sections=[
            ReportSection(
                title=EVIL,
                text=f"{EVIL}\n\n[click](javascript:alert(1)) ![remote](http://example.com/x.png)",
                figures=[Figure(path=figures[0], caption=EVIL, alt=f'"{EVIL}')],
                tables=[Table(rows=[{EVIL: EVIL}], caption=EVIL)],
            )
        ],
        appendix=Appendix(configs={EVIL: EVIL}, seeds={EVIL: [1]}, package_versions={EVIL: EVIL}),
    )
    doc = render_report(report, tmp_path / "report.html").read_text()
    assert doc.count("<script>") == 1  # the report's own load check, only
    # <title>, <h1>, subtitle, contents, <h2>, text, alt, caption, table caption, column, cell, config name
    # and text, seeds, package name and version
    assert doc.count(ESCAPED) == 16
    assert f'alt="&quot;{ESCAPED}"' in doc
    assert 'href="javascript:' not in doc  # an unsafe link stays text
    assert doc.count("<img") == 1  # markdown images are not rendered: the report loads nothing


def test_missing_figure_raises_before_writing(tmp_path, figures):
    out = tmp_path / "report.html"
    out.write_text("the earlier report")
    missing = tmp_path / "nowhere" / "gone.png"
    report = _report([figures[0], missing])
    with pytest.raises(FileNotFoundError, match=r"figure file\(s\) not found: .*nowhere/gone\.png$"):
        render_report(report, out)
    assert out.read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "square.png", "wide.png"]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        render_report(report, tmp_path / "new" / "report.html")
    assert not (tmp_path / "new").exists()


def test_a_figure_that_is_not_png_raises(tmp_path, figures):
    jpeg = tmp_path / "photo.png"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not a png")
    with pytest.raises(ValueError, match=r"not PNG: .*photo\.png$"):
        render_report(_report([figures[0], jpeg]), tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("value", "significant", "text"),
    [
        (0.851234, 3, "0.851"),
        (1234.56, 3, "1235"),
        (-98765.4, 3, "-98765"),
        (999.6, 3, "1000"),
        (0.000123456, 3, "0.000123"),
        (2.0, 3, "2"),
        (0.0, 3, "0"),
        (0.851234, 2, "0.85"),
        (0.851234, None, "0.851234"),
        (float("nan"), 3, "nan"),
        (float("inf"), 3, "inf"),
        (7, 3, "7"),
        (True, 3, "True"),
        (None, 3, ""),
        ([42, 0.12345], 3, "42, 0.123"),
        (np.float32(0.851234), 3, "0.851"),
        (1.5e20, 3, "1.5e+20"),
        (np.int64(12345), 3, "12345"),
        ("as given", 3, "as given"),
    ],
)
def test_format_cell(value, significant, text):
    assert format_cell(value, significant) == text


def test_png_size_reads_the_header(figures):
    assert png_size(figures[1].read_bytes()) == (300, 200)
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a" + bytes(30))


def test_package_versions():
    assert package_versions(["polars", "no-such-package-ftcircuits"]) == {
        "polars": pl.__version__,
        "no-such-package-ftcircuits": "not installed",
    }
    assert list(package_versions()) == list(DEFAULT_PACKAGES) == [
        "torch", "transformers", "peft", "deepspeed", "ray", "mlflow", "polars", "ftcircuits",
    ]  # fmt: skip


@pytest.fixture()
def chromium():
    found = find_chromium()
    if found is None:
        pytest.skip(INSTALL_HINT)
    return found


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path, figures, chromium):
    out = render_report(_report(figures), tmp_path / "report.html")
    dom = dump_dom(out, width=1000)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-figures="2"' in body
    assert 'data-images-loaded="2"' in body  # both decoded, with a non-zero size
    assert re.findall(r'data-natural-width="(\d+)" data-natural-height="(\d+)"', dom) == [
        ("200", "200"),
        ("300", "200"),
    ]
    page_height = int(re.search(r'data-page-height="(\d+)"', body).group(1))
    assert page_height > 400  # two figures (200 pixels high each), tables and the appendix

    shot = screenshot(out, tmp_path / "shots" / "report.png", width=1000)
    data = shot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert png_size(data) == (1000, page_height)  # the whole page, at the asked width
    pixels = mpimg.imread(shot)
    assert pixels.std() > 0.05  # not a blank page
    assert sorted(p.name for p in shot.parent.iterdir()) == ["report.png"]

    # the load check can fail: a PNG whose header is whole but whose image data is missing does not decode
    broken = tmp_path / "broken.png"
    broken.write_bytes(figures[0].read_bytes()[:33])
    dom = dump_dom(render_report(_report([figures[0], broken]), tmp_path / "broken.html"))
    assert 'data-images-loaded="1"' in re.search(r"<body[^>]*>", dom).group(0)
    assert re.findall(r'data-natural-width="(\d+)"', dom) == ["200", "0"]
