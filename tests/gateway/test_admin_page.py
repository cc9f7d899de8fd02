"""The admin page in a real browser: Debian's chromium, headless, driven by Playwright
(`make install` installs both; no browser download). Without chromium the test is
skipped, and under CI=true it fails."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from gateway_helpers import chain, new_conversation

if TYPE_CHECKING:
    from conftest import NodeFactory

pytestmark = pytest.mark.parametrize("backend", ["embedded"], indirect=True)
TOKEN = "page-token-of-the-tests-0123456789"
CHROMIUM = ("chromium", "chromium-browser")


def chromium() -> str:
    found = next(filter(None, map(shutil.which, CHROMIUM)), None)
    if found is None:
        message = "chromium is not installed; `make install` installs it (apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


async def test_the_page_shows_the_node_and_an_actor_and_flushes_it(
    start_node: NodeFactory,
) -> None:
    executable = chromium()
    from playwright.async_api import async_playwright, expect

    node = await start_node(admin_token=TOKEN, flush_interval=3600.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def figures(cid: str) -> Any:
        status, body = await node.request("GET", f"/admin/actors/{cid}", headers=auth)
        assert status == 200, body
        return body

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(node.base + "/admin")
            await page.get_by_label("Admin token").fill(TOKEN)
            await page.get_by_role("button", name="Use token").click()
            await expect(page.locator("#nodes tbody")).to_contain_text(node.settings.node())

            cid, root = await new_conversation(node)  # written while the page is open
            await chain(node, cid, 2, root)
            assert (await figures(cid))["unflushed_records"] == 3
            row = page.locator("#actors tbody tr", has_text=cid)
            await expect(row).to_be_visible(timeout=10_000)  # the next refresh shows it
            await row.click()
            unflushed = page.locator('#detail dd[data-field="unflushed_records"]')
            await expect(unflushed).to_have_text("3")
            await page.get_by_role("button", name="Flush").click()
            await expect(unflushed).to_have_text("0")
            await expect(page.locator("#status")).to_contain_text("Flushed")
        finally:
            await browser.close()
    assert (await figures(cid))["unflushed_records"] == 0
