"""The console's alert-rule, MCP and skills writes in a real headless Chromium (Debian's, driven
by Playwright) against a whole gateway: each action through the page, then its effect (the
rule listed, tested through a local webhook receiver, edited, removed; the MCP server in KV;
the skill installed from a local directory on disk), its entry on the audit page, the forms
saying what is wrong, and no JavaScript error. Screenshots of the three pages, light and dark,
go to docs/console/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from codeswitch.alert_rules import get_rule
from codeswitch.clients.mcp_store import McpStore
from runtime import names
from tests.alerts.conftest import Receiver, serve_receiver
from tests.console.conftest import World, wait_for
from tests.console.test_api_writes import skill_dir
from tests.console.test_browser import (  # noqa: F401 (browser: the module's fixture)
    Errors,
    _context,
    _goto,
    _ready,
    _shot,
    browser,
)

# the refusals this test provokes on purpose: a rule the API refuses (400), an install from
# the network with no network (502); Chromium logs their status, no JavaScript error
_PROVOKED = re.compile(r"^Failed to load resource: the server responded with a status of "
                       r"(400|502)")


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    yield from serve_receiver()


def _both(page: Page, w: World, name: str) -> None:
    """Screenshots of a page, light then dark (the theme switched as ◐ does), then light."""
    for scheme in ("light", "dark"):
        page.evaluate(f"localStorage.setItem('cs-theme', '{scheme}')")
        page.reload()
        _ready(page, name)
        assert page.evaluate("document.documentElement.dataset.theme") == scheme
        _shot(page, f"{name}-{scheme}")
    page.evaluate("localStorage.setItem('cs-theme', 'light')")
    page.reload()
    _ready(page, name)


def _mcp(w: World) -> dict[str, Any]:
    async def go(nc: Any) -> dict[str, Any]:
        store = McpStore(await nc.jetstream().key_value(names.MCP_BUCKET), nc)
        return {m.name: m for m in await store.list()}
    return w.on_nats(go)


def test_console_writes_in_chromium(world: World, browser: Browser, hooks: Receiver,  # noqa: F811
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    claude = tmp_path / "claude"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(claude))  # the gateway's machine: here
    errors = Errors()
    ctx = _context(browser)
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.seen.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.seen.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" and not _PROVOKED.match(msg.text) else None)
    page.on("dialog", lambda d: d.accept())  # "Remove …?"

    # -- alerts: the form says what is wrong -----------------------------------------------
    _goto(page, w, "alerts")
    form = page.locator("#rule-form")
    form.locator("[name=name]").fill("errs")
    form.locator("[name=metric]").select_option("error_rate")
    expect(form.locator("#threshold-label")).to_contain_text("%")
    form.locator("[name=threshold]").fill("0.2")
    form.locator("button[type=submit]").click()
    expect(form.locator(".error")).to_contain_text("did you mean 20%?")
    expect(form.locator("[name=threshold]")).to_have_attribute("aria-invalid", "true")
    form.locator("[name=threshold]").fill("20%")
    form.locator("[name=scope]").fill("region:eu")  # only the API knows the scope kinds
    form.locator("button[type=submit]").click()
    expect(form.locator(".error")).to_contain_text("scope 'region:eu'")
    expect(form.locator("[name=scope]")).to_have_attribute("aria-invalid", "true")
    expect(form.locator("[name=threshold]")).not_to_have_attribute("aria-invalid", "true")
    assert w.on_nats(lambda nc: get_rule(nc, "errs")) is None
    # -- add, with two webhooks --------------------------------------------------------
    form.locator("[name=scope]").fill("all")
    form.locator("[name=window]").fill("10m")
    form.locator("[name=channels]").fill(f"{hooks.url()}\nslack={hooks.url('/slack')}")
    form.locator("[name=description]").fill("too many errors")
    form.locator("button[type=submit]").click()
    row = page.locator("tr[data-rule=errs]")
    expect(row).to_contain_text("error_rate > 20%")
    expect(row).to_contain_text("600 s")
    stored = w.on_nats(lambda nc: get_rule(nc, "errs"))
    assert stored is not None and stored.threshold == 20.0 and len(stored.channels) == 2
    assert hooks.url() not in page.content()  # webhook URLs are secrets: labels only
    # -- test: each channel's answer on the page ------------------------------------------
    row.get_by_role("button", name="Test").click()
    result = page.locator("#rule-test-result")
    expect(result).to_contain_text("Test of errs: sent")
    expect(result.locator("li")).to_have_count(2)
    expect(result.locator("li").nth(1)).to_contain_text("sent")
    body = wait_for(lambda: hooks.bodies(), 10, "the test notification")[0]
    assert body["kind"] == "test" and body["rule"] == "errs"
    hooks.status["/slack"] = 500
    hooks.fail["/slack"] = 0
    row.get_by_role("button", name="Test").click()
    expect(result).to_contain_text("Test of errs: failed", timeout=30000)
    expect(result.locator("li").nth(1)).to_contain_text("HTTP 500")
    hooks.status["/slack"] = 200
    # -- edit: the threshold changes, the channels stay -----------------------------------
    row.get_by_role("button", name="Edit").click()
    form = page.locator("#rule-form")
    expect(form.locator("[name=name]")).to_have_value("errs")
    expect(form.locator("[name=threshold]")).to_have_value("20%")
    form.locator("[name=threshold]").fill("30%")
    form.locator("button[type=submit]").click()
    expect(page.locator("tr[data-rule=errs]")).to_contain_text("error_rate > 30%")
    stored = w.on_nats(lambda nc: get_rule(nc, "errs"))
    assert stored is not None and stored.threshold == 30.0 and len(stored.channels) == 2
    # -- a second rule, without channels: nothing to test; then removed -------------------
    form = page.locator("#rule-form")
    form.locator("[name=name]").fill("quiet")
    form.locator("[name=metric]").select_option("no_traffic")
    form.locator("[name=threshold]").fill("0")
    form.locator("[name=minutes]").fill("15")
    form.locator("button[type=submit]").click()
    quiet = page.locator("tr[data-rule=quiet]")
    expect(quiet).to_contain_text("no request for 15 min")
    expect(quiet.get_by_role("button", name="Test")).to_be_disabled()
    quiet.get_by_role("button", name="Remove").click()
    expect(page.locator("tr[data-rule=quiet]")).to_have_count(0)
    assert w.on_nats(lambda nc: get_rule(nc, "quiet")) is None
    page.locator("tr[data-rule=errs]").get_by_role("button", name="Test").click()
    expect(page.locator("#rule-test-result")).to_contain_text("Test of errs: sent")
    _shot(page, "alerts-light")
    page.evaluate("localStorage.setItem('cs-theme', 'dark')")
    page.reload()
    _ready(page, "alerts")
    page.locator("tr[data-rule=errs]").get_by_role("button", name="Test").click()
    expect(page.locator("#rule-test-result")).to_contain_text("Test of errs: sent")
    _shot(page, "alerts-dark")
    page.evaluate("localStorage.setItem('cs-theme', 'light')")

    # -- MCP servers: add (stdio, http), disable, remove; in KV ----------------------------
    _goto(page, w, "mcp")
    form = page.locator("#mcp-form")
    form.locator("[name=name]").fill("fs")
    form.locator("[name=command]").fill("")
    form.locator("button[type=submit]").click()
    expect(form.locator(".error")).to_contain_text("a stdio server needs a command")
    form.locator("[name=command]").fill("npx -y @mcp/server-fs /srv")
    form.locator("[name=env]").fill("FS_TOKEN=ENV-SECRET")
    form.locator("button[type=submit]").click()
    expect(page.locator("tr[data-mcp=fs]")).to_contain_text("npx -y @mcp/server-fs /srv")
    form = page.locator("#mcp-form")
    form.locator("[name=name]").fill("docs")
    form.locator("[name=transport]").select_option("http")
    expect(form.locator("[name=command]")).to_be_hidden()
    form.locator("[name=url]").fill("https://mcp.example/docs")
    form.locator("[name=headers]").fill("Authorization: Bearer HDR-SECRET")
    form.locator("button[type=submit]").click()
    docs = page.locator("tr[data-mcp=docs]")
    expect(docs).to_contain_text("Authorization")
    kv = _mcp(w)
    assert kv["fs"].command == "npx" and kv["fs"].args == ["-y", "@mcp/server-fs", "/srv"]
    assert kv["fs"].env == {"FS_TOKEN": "ENV-SECRET"}
    assert kv["docs"].headers == {"Authorization": "Bearer HDR-SECRET"}
    assert "HDR-SECRET" not in page.content() and "ENV-SECRET" not in page.content()
    docs.get_by_role("button", name="Disable").click()
    expect(page.locator("tr[data-mcp=docs]")).to_contain_text("disabled")
    assert _mcp(w)["docs"].enabled is False
    _both(page, w, "mcp")
    page.locator("tr[data-mcp=docs]").get_by_role("button", name="Enable").click()
    expect(page.locator("tr[data-mcp=docs]")).to_contain_text("enabled")
    wait_for(lambda: _mcp(w)["docs"].enabled, 10, "docs enabled in KV")
    page.locator("tr[data-mcp=fs]").get_by_role("button", name="Remove").click()
    expect(page.locator("tr[data-mcp=fs]")).to_have_count(0)
    assert "fs" not in _mcp(w)

    # -- skills: install from a local directory, browse, no network, remove ----------------
    src = skill_dir(tmp_path)
    _goto(page, w, "skills")
    form = page.locator("#skill-form")
    form.locator("[name=name]").fill("pdf")
    form.locator("[name=from]").select_option("")
    form.locator("[name=source]").fill(str(src))
    expect(form.locator("[name=repo]")).to_have_value("skills-src")
    form.locator("[name=subdir]").fill("skills")
    form.locator("button[type=submit]").click()
    skill = page.locator("tr[data-skill=pdf]")
    expect(skill).to_contain_text("skills-src")
    expect(skill).to_contain_text(str(src))
    assert (claude / "skills" / "pdf" / "notes.txt").read_text() == "page by page\n"
    assert (claude / "skills" / "pdf" / "SKILL.md").exists()
    # a built-in repository is on the network, and there is none here: it says so
    form = page.locator("#skill-form")
    form.locator("[name=name]").fill("xlsx")
    form.locator("[name=from]").select_option("anthropics")
    form.locator("button[type=submit]").click()
    expect(form.locator(".error")).to_contain_text("offline", timeout=60000)
    expect(form.locator(".error")).to_contain_text("local directory or archive")
    page.locator("tr[data-repo=skills-src]").get_by_role("button", name="Browse").click()
    expect(page.locator("#skill-browse tr[data-offer=pdf]")).to_contain_text("installed")
    _both(page, w, "skills")
    page.locator("tr[data-skill=pdf]").get_by_role("button", name="Remove").click()
    expect(page.locator("tr[data-skill=pdf]")).to_have_count(0)
    assert not (claude / "skills" / "pdf").exists()

    # -- the audit page lists every one of them --------------------------------------------
    wanted = [("rule.added", "rule:errs"), ("rule.tested", "rule:errs"),
              ("rule.updated", "rule:errs"), ("rule.added", "rule:quiet"),
              ("rule.removed", "rule:quiet"), ("mcp.added", "mcp:fs"),
              ("mcp.added", "mcp:docs"), ("mcp.disabled", "mcp:docs"),
              ("mcp.enabled", "mcp:docs"),
              ("mcp.removed", "mcp:fs"), ("skill_repo.added", "skill_repo:skills-src"),
              ("skill.installed", "skill:pdf"), ("skill.removed", "skill:pdf")]
    missing: list[tuple[str, str]] = []
    _goto(page, w, "audit")

    def listed() -> bool:
        page.reload()
        _ready(page, "audit")
        missing[:] = [(a, t) for a, t in wanted if not page.locator(
            f"tr[data-action='{a}']").filter(has_text=t).count()]
        return not missing
    try:
        wait_for(listed, 60, "the audit page to list every write")
    except AssertionError:
        raise AssertionError(f"not on the audit page: {missing}") from None
    expect(page.locator("tr[data-action='rule.added']").filter(has_text="rule:errs")
           ).to_contain_text("local:")
    assert "HDR-SECRET" not in page.content() and hooks.url() not in page.content()
    ctx.close()
    assert errors.seen == [], errors.seen
