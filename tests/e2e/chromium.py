"""What the browser tests share: Debian's Chromium driven by Playwright (never
`playwright install`), the skip when it is missing, and axe-core's accessibility check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# Without these, Chromium keeps calling out to Google's services, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BLOCKING_IMPACTS = {"serious", "critical"}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("REFNET_REQUIRE_BROWSER"),
    reason="browser tests need Debian's chromium: apt-get install -y chromium",
)


def accessibility_problems(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['impact']} {v['id']}: {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in BLOCKING_IMPACTS
    ]
