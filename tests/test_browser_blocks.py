"""Saved blocks on the runner page in a real browser (headless Chromium driven by
Playwright, as tests/test_browser_runner.py does, with its fixtures): open a block,
edit, save a version, diff two versions, deploy and roll back, and the block's endpoint
answering from the version deployed, fetched from the live server.

Each step leaves a screenshot in test-artifacts/screenshots/.
"""

import re

import httpx
import pytest

from blocks.models import Block, Schedule
from blocks.service import deploy, save_block
from tenants import audit
from tenants.models import AuditLog, BlockRun, Membership
from tests.test_browser_runner import base_url, browser, open_runner, people, server, set_code, shot  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def endpoint_code(version):
    return (
        "export default {\n"
        "  async fetch(request) {\n"
        f"    return Response.json({{ answer: 'hello from version {version}', path: new URL(request.url).pathname }});\n"
        "  },\n"
        "};\n"
    )


@pytest.fixture
def greeting(people):
    block, _, _ = save_block(people["acme"], "greeting", code=endpoint_code(1), message="first answer", user=people["alice"])
    block.public_endpoint = True
    block.save()
    deploy(block, 1, user=people["alice"])
    Schedule.objects.create(block=block, cron="0 9 * * 1-5", timezone="Europe/Paris", enabled=False)
    return block


def test_it_opens_saves_diffs_deploys_and_rolls_back_a_block(browser, base_url, people, greeting):
    endpoint = f"{base_url}/b/acme/greeting/"

    def deployed(page, number):
        page.wait_for_function("(n) => document.getElementById('deployed-version').textContent === `version ${n}`", arg=number)

    def steps(context):
        page = open_runner(context, base_url)
        page.wait_for_selector("#block option[value=greeting]", state="attached")
        page.select_option("#block", "greeting")
        # The deployed version is in the editor, the block's tab shows the rest.
        page.wait_for_selector("#block-info:not([hidden])")
        assert page.evaluate("window.symposiumEditor.state.doc.toString()") == endpoint_code(1)
        assert page.locator("#endpoint-url").inner_text() == endpoint
        assert page.locator("#endpoint-access").inner_text() == "public"
        assert page.locator("#versions tr").count() == 1
        schedule = page.locator("#schedules tr").inner_text()
        assert "0 9 * * 1-5" in schedule and "Europe/Paris" in schedule and "paused" in schedule
        shot(page, "20-block-opened")

        # Edit and save: version 2. Saving the same code again makes no version.
        set_code(page, endpoint_code(2))
        page.fill("#save-message", "second answer")
        page.click("#save")
        page.wait_for_function("() => document.getElementById('save-state').textContent === 'Saved as version 2.'")
        page.wait_for_function("() => document.querySelectorAll('#versions tr').length === 2")
        assert "second answer" in page.locator("#versions tr[data-version='2']").inner_text()
        page.click("#save")
        page.wait_for_function("() => document.getElementById('save-state').textContent.startsWith('No change')")
        assert page.locator("#save-state").inner_text() == "No change: the code is version 2's; no new version was saved."
        assert page.locator("#versions tr").count() == 2

        # The diff of versions 1 and 2 (the chosen pair by default).
        page.click("#show-diff")
        page.wait_for_selector("#diff:not([hidden])")
        assert page.locator("#diff .del").all_inner_texts() == [
            "-    return Response.json({ answer: 'hello from version 1', path: new URL(request.url).pathname });"]
        assert page.locator("#diff .add").all_inner_texts() == [
            "+    return Response.json({ answer: 'hello from version 2', path: new URL(request.url).pathname });"]
        assert page.locator("#diff-summary").inner_text() == "v1 → v2: 1 line added, 1 line removed."
        shot(page, "21-block-diff")

        # Deploy version 2: the endpoint answers from it.
        page.click("#versions tr[data-version='2'] .deploy-version")
        deployed(page, 2)
        answers = [httpx.get(endpoint, timeout=30).json()["answer"]]
        # Roll back to version 1 (the older one): the endpoint answers from version 1.
        rollback = page.locator("#versions tr[data-version='1'] .deploy-version")
        assert rollback.inner_text() == "Roll back to this"
        rollback.click()
        deployed(page, 1)
        assert page.locator("#banner").inner_text() == "Rolled back to version 1."
        assert "deployed" in page.locator("#versions tr[data-version='1']").inner_text()
        response = httpx.get(endpoint + "some/path", timeout=30)
        answers.append(response.json())
        shot(page, "22-block-rolled-back")

        # The endpoint's runs are the block's recent runs, with the version each ran.
        page.reload()  # the address keeps the open block (?block=greeting), the editor its code
        page.wait_for_selector("#block-info:not([hidden])", state="attached")
        assert page.evaluate("window.symposiumEditor.state.doc.toString()") == endpoint_code(2)
        page.click("[data-tab=block]")
        runs = page.locator("#block-runs tr").all_inner_texts()
        assert len(runs) == 2 and "http" in runs[0] and "v1" in runs[0] and "v2" in runs[1]
        shot(page, "23-block-runs")
        return answers, response.headers["x-symposium-run"]

    answers, run_id = browser.run(steps)
    assert answers == ["hello from version 2", {"answer": "hello from version 1", "path": "/b/acme/greeting/some/path"}]
    run = BlockRun.objects.get(pk=run_id)
    assert (run.source, run.block, run.version.number) == ("http", greeting, 1)
    block = Block.objects.get(pk=greeting.pk)
    assert (block.deployed_version.number, block.versions.count()) == (1, 2)
    assert block.versions.get(number=2).author == people["alice"]
    audit.flush()
    assert list(AuditLog.objects.filter(capability="blocks", user=people["alice"]).order_by("time", "id")
                .values_list("operation", "target")) == [("deploy", "greeting@1"), ("deploy", "greeting@2"), ("rollback", "greeting@1")]


def test_a_viewer_sees_a_block_but_cannot_save_or_deploy(browser, base_url, people, greeting):
    from django.contrib.auth import get_user_model

    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=people["acme"], user=victor, role="viewer")

    def steps(context):
        page = context.new_page()
        page.goto(f"{base_url}/runner/?block=greeting")
        page.fill("#id_username", "victor")
        page.fill("#id_password", "victor-password-123")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/runner/"))
        page.wait_for_selector("#block-info:not([hidden])")
        assert page.is_disabled("#save")
        assert page.locator(".deploy-version").count() == 0
        assert page.locator("#versions tr").count() == 1
        shot(page, "24-block-viewer")

    browser.run(steps)
