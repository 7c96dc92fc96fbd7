"""Open an HTML file, or a page a local server serves (the MLflow UI), in headless Chromium (its own command
line): dump the DOM after scripts ran, or take a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ftcircuits.paths import atomic_file

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "chromium not installed: apt-get install chromium"
# headless, no sandbox (CI runs as root), nothing fetched from the network
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip
BUDGET_MS = 10_000  # virtual time the page's scripts get before the dump or screenshot
DEFAULT_HEIGHT = 2400
_PAGE_HEIGHT = re.compile(r'<body[^>]*\bdata-page-height="(\d+)"')


def find_chromium() -> Path | None:
    """Return the first Chromium (or Chrome) executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def page_url(page: Path | str) -> str:
    """Return a page's URL: an ``http(s)://`` address as it is, a file path as a ``file://`` URL."""
    text = str(page)
    return text if text.startswith(("http://", "https://")) else Path(page).resolve().as_uri()


def _run(args: list[str], timeout: float, budget_ms: int = BUDGET_MS) -> subprocess.CompletedProcess[str]:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="ftcircuits-chromium-") as profile:
        flags = [*CHROMIUM_FLAGS, f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}"]
        command = [str(chromium), *flags, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done


def dump_dom(
    html: Path | str,
    width: int = 1200,
    timeout: float = 120,
    height: int = DEFAULT_HEIGHT,
    budget_ms: int = BUDGET_MS,
) -> str:
    """Return the page's DOM (serialised) once it has loaded and its scripts ran for ``budget_ms`` of
    virtual time; ``html`` is a file or an ``http(s)://`` address."""
    args = [f"--window-size={width},{height}", "--dump-dom", page_url(html)]
    return _run(args, timeout, budget_ms).stdout


def page_height(html: Path, width: int = 1200) -> int | None:
    """Return the height the page records on its body (``data-page-height``, as ``report.html`` pages
    do) at this window width, or None when it records none."""
    found = _PAGE_HEIGHT.search(dump_dom(html, width))
    return int(found.group(1)) if found else None


def screenshot(
    html: Path | str,
    png: Path,
    width: int = 1200,
    height: int | None = None,
    timeout: float = 120,
    budget_ms: int = BUDGET_MS,
) -> Path:
    """Write a PNG of the page (a file or an ``http(s)://`` address), ``width`` x ``height`` pixels;
    ``height`` None takes the whole page (the content height the page records, else 2400). ``png`` is
    replaced only once Chromium wrote the image."""
    if height is None:
        height = page_height(html, width) or DEFAULT_HEIGHT
    url = page_url(html)
    with tempfile.TemporaryDirectory(prefix="ftcircuits-screenshot-") as work:
        shot = Path(work) / "page.png"  # Chromium picks the image format from the name's suffix
        _run([f"--window-size={width},{height}", f"--screenshot={shot}", url], timeout, budget_ms)
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(f"chromium wrote no screenshot of {html}")
        with atomic_file(Path(png)) as tmp:
            shutil.copyfile(shot, tmp)
    return Path(png)
