"""Drive a page in the system's headless Chromium (``screenshot.find_chromium``) through Playwright, for
tests and benchmarks that interact with it: click, move a slider, read the console. Playwright is pointed at
that browser (``executable_path``); it never downloads one (``playwright install`` is not needed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ftcircuits.paths import atomic_file
from ftcircuits.report.screenshot import CHROMIUM_FLAGS, INSTALL_HINT, find_chromium, page_url

if TYPE_CHECKING:
    from playwright.sync_api import Page

PLAYWRIGHT_HINT = "playwright not installed: pip install -e '.[test]' (it drives the system's chromium)"


@dataclass
class BrowserPage:
    """An open page and what its console reported: ``errors`` (console errors and uncaught exceptions)."""

    page: Page
    errors: list[str] = field(default_factory=list)


@contextmanager
def open_page(
    html: Path | str, width: int = 1400, height: int = 1000, fragment: str = ""
) -> Iterator[BrowserPage]:
    """Open ``html`` (a file or an ``http(s)://`` address, with ``#fragment`` when given) in headless system
    Chromium; yield the page with its console errors collected. FileNotFoundError when no Chromium is
    installed, ImportError (with how to install it) without Playwright."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(INSTALL_HINT)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise ImportError(PLAYWRIGHT_HINT) from error
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(chromium), args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            opened = BrowserPage(page)
            page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
            page.goto(page_url(html) + (f"#{fragment}" if fragment else ""))
            yield opened
        finally:
            browser.close()


def page_screenshot(
    html: Path | str,
    png: Path,
    fragment: str = "",
    width: int = 1400,
    height: int = 1000,
    ready: str = "true",
) -> Path:
    """Write a PNG of the page (``width`` x ``height``) once the JavaScript expression ``ready`` holds;
    ValueError naming them if the page logged console errors."""
    with open_page(html, width, height, fragment) as opened:
        opened.page.wait_for_function(ready, timeout=120_000)
        if opened.errors:
            raise ValueError(f"{html} logged console errors: {opened.errors}")
        with atomic_file(Path(png)) as tmp:
            opened.page.screenshot(path=str(tmp), type="png")
    return Path(png)
