"""Open an HTML file in headless Chromium (its own command line): dump the DOM after scripts ran, or
take a screenshot."""

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
    "--hide-scrollbars", "--virtual-time-budget=10000",
)  # fmt: skip
DEFAULT_HEIGHT = 2400
_PAGE_HEIGHT = re.compile(r'<body[^>]*\bdata-page-height="(\d+)"')


def find_chromium() -> Path | None:
    """Return the first Chromium (or Chrome) executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="ftcircuits-chromium-") as profile:
        command = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done


def dump_dom(html: Path, width: int = 1200, timeout: float = 120) -> str:
    """Return the page's DOM (serialised) once it has loaded and its scripts ran."""
    url = Path(html).resolve().as_uri()
    return _run([f"--window-size={width},{DEFAULT_HEIGHT}", "--dump-dom", url], timeout).stdout


def page_height(html: Path, width: int = 1200) -> int | None:
    """Return the height the page records on its body (``data-page-height``, as ``report.html`` pages
    do) at this window width, or None when it records none."""
    found = _PAGE_HEIGHT.search(dump_dom(html, width))
    return int(found.group(1)) if found else None


def screenshot(
    html: Path, png: Path, width: int = 1200, height: int | None = None, timeout: float = 120
) -> Path:
    """Write a PNG of the page, ``width`` x ``height`` pixels; ``height`` None takes the whole page (the
    content height the page records, else 2400). ``png`` is replaced only once Chromium wrote the image."""
    if height is None:
        height = page_height(html, width) or DEFAULT_HEIGHT
    url = Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="ftcircuits-screenshot-") as work:
        shot = Path(work) / "page.png"  # Chromium picks the image format from the name's suffix
        _run([f"--window-size={width},{height}", f"--screenshot={shot}", url], timeout)
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(f"chromium wrote no screenshot of {html}")
        with atomic_file(Path(png)) as tmp:
            shutil.copyfile(shot, tmp)
    return Path(png)
