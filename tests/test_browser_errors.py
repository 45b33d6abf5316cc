"""Where a block failed, in the runner page (headless Chromium, the real server and
isolates, as tests/test_browser_runner.py drives them): the error's line marked in the
editor's gutter, its stack with frames that move the cursor, a syntax error's code frame,
and TypeScript blocks (the language switch, a run, a type check with its locations)."""

import pytest

from tests.test_browser_runner import (  # noqa: F401  (fixtures)
    TIMEOUT, base_url, browser, open_runner, people, server, set_code, shot, wait_status,
)

pytestmark = [
    pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]

CHECK_TIMEOUT = 120_000  # ms: a type check is a compiler's start, on a shared machine


def marked_lines(page):
    """The editor's line numbers that carry an error mark in the gutter."""
    return page.evaluate("""() => {
      const view = window.symposiumEditor;
      return [...document.querySelectorAll('.cm-gutter-lint .cm-gutterElement')]
        .filter((element) => element.querySelector('.cm-lint-marker-error'))
        .map((element) => view.state.doc.lineAt(view.lineBlockAtHeight(element.offsetTop + 1).from).number);
    }""")


def cursor(page):
    """The editor's cursor as [line, column], both from 1."""
    return page.evaluate("""() => {
      const state = window.symposiumEditor.state;
      const head = state.selection.main.head;
      const line = state.doc.lineAt(head);
      return [line.number, head - line.from + 1];
    }""")


def name_block(page, name):
    page.fill("#block-name", name)


def test_it_marks_a_thrown_errors_line_and_a_frame_moves_the_cursor(browser, base_url, people):
    code = "const x = 7;\nfunction big(n) {\n  if (n > 5) throw new TypeError('x is too big: ' + n);\n}\nbig(x);\n"

    def steps(context):
        page = open_runner(context, base_url)
        name_block(page, "block.js")
        set_code(page, code)
        page.click("#run")
        wait_status(page, "failed")
        outcome = page.locator("#outcome")
        assert page.locator("#outcome .error-code").inner_text() == "TypeError"
        assert "TypeError: x is too big: 7" in outcome.inner_text()
        assert page.locator("#outcome .code-frame").inner_text() == (
            "  2 | function big(n) {\n> 3 |   if (n > 5) throw new TypeError('x is too big: ' + n);\n    |                    ^")
        frames = page.locator("#outcome .stack button.frame")
        assert frames.all_inner_texts() == ["big (block.js:3:20)", "block.js:5:1"]
        page.wait_for_function("document.querySelectorAll('.cm-lint-marker-error').length === 1")
        assert marked_lines(page) == [3]
        assert page.locator(".cm-lintRange-error").inner_text() == "new"  # the word at the column
        shot(page, "errors-01-thrown")

        frames.nth(1).click()
        assert cursor(page) == [5, 1]
        frames.nth(0).click()
        assert cursor(page) == [3, 20]
        assert page.evaluate("document.activeElement.closest('.cm-editor') !== null")  # the editor has the focus

    browser.run(steps)


def test_it_shows_a_syntax_errors_code_frame(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        name_block(page, "block.js")
        set_code(page, "const a = 1;\nconst b = ;\nconsole.log(a, b);\n")
        page.click("#run")
        wait_status(page, "failed")
        assert page.locator("#outcome .error-code").inner_text() == "SYNTAX_ERROR"
        assert "SyntaxError: Expression expected" in page.locator("#outcome").inner_text()
        assert page.locator("#outcome .code-frame").inner_text() == "  1 | const a = 1;\n> 2 | const b = ;\n    |           ^"
        page.wait_for_function("document.querySelectorAll('.cm-lint-marker-error').length === 1")
        assert marked_lines(page) == [2]
        shot(page, "errors-02-syntax")

    browser.run(steps)


def test_a_refused_fetch_names_its_line_and_says_what_to_use(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        name_block(page, "block.js")
        set_code(page, "// global fetch is not the platform's\nawait fetch('https://example.com/');\n")
        page.click("#run")
        wait_status(page, "failed")
        text = page.locator("#outcome").inner_text()
        assert "symposium.network.fetch" in text and "--allow" not in text
        assert page.locator("#outcome .stack button.frame").all_inner_texts() == ["block.js:2:7"]
        page.wait_for_function("document.querySelectorAll('.cm-lint-marker-error').length === 1")
        assert marked_lines(page) == [2]

    browser.run(steps)


def test_it_runs_a_typescript_block_and_checks_its_types(browser, base_url, people):
    code = ("const greeting: number = 'hello';\ninterface Input { name: string }\n"
            "export default ({ name }: Input): string => `${greeting}, ${name}`;\n")

    def steps(context):
        page = open_runner(context, base_url)
        name_block(page, "greet.js")
        assert page.is_hidden("#check-types")
        page.select_option("#language", "typescript")
        assert page.input_value("#block-name") == "greet.ts"
        assert page.is_visible("#check-types")
        set_code(page, code)
        page.fill("#input", '{"name": "Ada"}')
        page.click("#run")
        wait_status(page, "succeeded")
        # Deno strips the types and runs it; the wrong annotation is the checker's business.
        assert page.locator("#outcome .result").inner_text() == '"hello, Ada"'
        shot(page, "errors-03-typescript-run")

        page.click("#check-types")
        page.wait_for_selector("#outcome.check", timeout=CHECK_TIMEOUT)
        page.wait_for_function("document.getElementById('check-types').textContent === 'Check types'", timeout=CHECK_TIMEOUT)
        assert page.locator("#outcome .check-summary").inner_text() == "1 type error"
        diagnostic = page.locator("#outcome .diagnostic")
        assert diagnostic.count() == 1
        assert "Type 'string' is not assignable to type 'number'." in diagnostic.inner_text()
        place = diagnostic.locator("button.frame")
        assert place.inner_text() == "greet.ts:1:7"
        page.wait_for_function("document.querySelectorAll('.cm-lint-marker-error').length === 1")
        assert marked_lines(page) == [1]
        shot(page, "errors-04-type-check")
        place.click()
        assert cursor(page) == [1, 7]

        # Back to JavaScript: the name follows and the checker's button goes.
        page.select_option("#language", "javascript")
        assert page.input_value("#block-name") == "greet.js" and page.is_hidden("#check-types")

    browser.run(steps, timeout=300)
