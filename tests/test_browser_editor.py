"""The runner's editor in a real browser (headless Chromium, as tests/test_browser_runner.py
sets it up): it completes and explains the symposium API from symposium.d.ts, links the
file for authors' editors, and runs a block that imports a vetted npm package."""

import io
import re

import pytest
from django.core.management import call_command

from tests.test_browser_runner import base_url, browser, open_runner, people, server, set_code, shot, wait_status  # noqa: F401

pytestmark = [
    pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def test_it_completes_the_symposium_api_with_signatures(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        set_code(page, "")
        page.click(".cm-content")
        page.keyboard.type("const canvas = await symposium.canvas.cr")
        page.wait_for_selector(".cm-tooltip-autocomplete")
        options = page.locator(".cm-tooltip-autocomplete li")
        labels = options.locator(".cm-completionLabel").all_inner_texts()
        assert "createCanvas" in labels, labels
        option = options.filter(has_text="createCanvas").first
        assert option.locator(".cm-completionDetail").inner_text() == "(width: number, height: number)"
        info = page.locator(".cm-completionInfo")
        info.wait_for()
        assert "symposium.canvas.createCanvas(width: number, height: number): Promise<" in info.inner_text()
        assert "transparent canvas" in info.inner_text()
        shot(page, "editor-01-completion")
        page.keyboard.press("Enter")
        assert page.evaluate("window.symposiumEditor.state.doc.toString()") == "const canvas = await symposium.canvas.createCanvas"

        # Right after `symposium.`, the capabilities and the top-level methods.
        set_code(page, "")
        page.click(".cm-content")
        page.keyboard.type("symposium.")
        page.wait_for_selector(".cm-tooltip-autocomplete")
        labels = page.locator(".cm-tooltip-autocomplete .cm-completionLabel").all_inner_texts()
        assert {"readFile", "canvas", "network", "kv", "utils"} <= set(labels), labels
        page.keyboard.press("Escape")

        # Hovering a call shows what it is.
        set_code(page, "await symposium.kv.set('visits', 1, { ttl: 60 });\n")
        word = page.locator(".cm-line").first
        box = word.bounding_box()
        assert page.locator(".api-hover").is_hidden()
        page.mouse.move(box["x"] + 120, box["y"] + box["height"] / 2)
        page.wait_for_selector(".api-hover:not([hidden])")
        tip = page.locator(".api-hover").inner_text()
        assert "symposium.kv.set(key: string, value: unknown, opts?: number | { ttl?: number })" in tip and "lifetime in seconds" in tip
        shot(page, "editor-02-hover")
        page.mouse.move(5, 5)
        page.wait_for_selector(".api-hover[hidden]", state="attached")

        # The declarations are one link away, for authors' own editors.
        link = page.locator("#types-link")
        assert link.get_attribute("download") == "symposium.d.ts"
        answer = page.request.get(base_url + link.get_attribute("href"))
        assert answer.ok and "declare namespace symposium" in answer.text()
        assert "createCanvas(width: number, height: number)" in answer.text()

    browser.run(steps)


def test_it_runs_a_block_importing_an_allowed_npm_package(browser, base_url, people, settings, tmp_path):
    settings.SYMPOSIUM_PACKAGE_CACHE = tmp_path / "packages"
    call_command("addpackage", "npm:ms@2.1.3", "--tenant", "acme", stdout=io.StringIO(), stderr=io.StringIO())

    def steps(context):
        page = open_runner(context, base_url)
        set_code(page, 'import ms from "npm:ms@2.1.3";\nconsole.log("2 hours are", ms("2h"), "ms");\nexport default () => ms(90_000);\n')
        page.click("#run")
        wait_status(page, "succeeded")
        assert "2 hours are 7200000 ms" in page.locator("#console").inner_text()
        shot(page, "editor-03-npm-package")

        # The same block for a tenant the package is not allowed for is refused, naming
        # the admin page.
        page.goto(f"{base_url}/runner/?tenant=basic-co")
        page.wait_for_selector("#conn.up")
        set_code(page, 'import ms from "npm:ms@2.1.3";\nexport default () => ms("1s");\n')
        page.click("#run")
        wait_status(page, "failed")
        page.wait_for_function("document.body.innerText.includes('/admin/isolates/npmpackage/')")
        assert re.search(r"npm:ms@2\.1\.3 is not an allowed package", page.locator("body").inner_text())

    browser.run(steps)
