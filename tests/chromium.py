"""Headless Chromium driven by Playwright for the browser tests; a test skips, saying why, when either is missing.

Playwright drives the system's Chromium (``apt-get install -y chromium``; .ci/run installs it):
no browser is downloaded, and the page reaches nothing but the loopback server under test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A fresh Playwright page in headless Chromium, closed on exit."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser_path is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def saved(page: Any, action: Any) -> None:
    """Run ``action`` (a click or a keystroke) and wait until the form's save request it causes succeeds."""
    with page.expect_response(lambda reply: reply.url.endswith("/save")) as reply:
        action()
    assert reply.value.ok, reply.value.text()


def screenshot(page: Path, png: Path) -> None:
    """Render the HTML file ``page`` in headless Chromium into ``png``; fail on a console error or a missing resource."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--window-size=1200,1600", f"--screenshot={png}", page.as_uri()]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 10_000
    problems = [line for line in result.stderr.splitlines()
                if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]
    assert not problems, problems
