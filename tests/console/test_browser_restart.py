"""A console left open while the gateway's edge restarts: the page says it is reconnecting,
then is live again by itself, and a request made after the restart reaches the dashboard live
(Debian's Chromium through Playwright, a whole gateway, open mode)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.console.browser import ARGS, ensure_chromium
from tests.console.conftest import World


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=ensure_chromium(), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_open_console_survives_an_edge_restart(world: World, browser: Browser) -> None:
    w = world
    errors: list[str] = []
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{w.url}/console#/dashboard")
    expect(page.locator("#live")).to_have_text("● live")

    w.stop_edge()
    expect(page.locator("#live")).to_have_text("○ reconnecting", timeout=10000)
    w.start_edge()  # the same port and data directory (the session key survives)
    expect(page.locator("#live")).to_have_text("● live", timeout=15000)

    r = w.llm(session="after-restart")
    assert r.status_code == 200
    rid = r.headers["x-codeswitch-request-id"]
    expect(page.locator(f"#recent tr[data-request='{rid}']")).to_be_visible(timeout=5000)
    # the page still reads the API with its session (the cookie outlived the restart)
    assert page.evaluate("async () => (await fetch('/admin/api/dashboard')).status") == 200
    ctx.close()
    assert errors == []
