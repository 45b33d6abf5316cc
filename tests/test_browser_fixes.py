"""Fixes to the runner page and the admin found by trying them as a new block author
would: one assertion in headless Chromium for each fix that shows in a page, a plain
test for each that does not.

Run with: .venv/bin/pytest tests/test_browser_fixes.py -q
"""

import re

import pytest
from django.contrib.auth import get_user_model

from tenants.models import AuditLog, BlockRun, Membership
from tests.test_browser_runner import (  # noqa: F401  (fixtures and the browser's steps)
    EXAMPLES,
    TIMEOUT,
    base_url,
    browser,
    drawn,
    open_runner,
    people,
    pytestmark,
    server,
    set_code,
    shot,
    wait_status,
)


@pytest.fixture
def suspended(people, make_tenant):
    """A tenant alice owns that an admin has suspended."""
    tenant = make_tenant("dormant", "Interactive", is_active=False, suspended_reason="unpaid invoice")
    Membership.objects.create(tenant=tenant, user=people["alice"], role="owner")
    return tenant


def test_it_says_a_suspended_tenants_run_was_refused_and_clears_the_other_tenants_output(browser, base_url, people, suspended):
    def steps(context):
        page = open_runner(context, base_url)
        page.select_option("#examples", "hello")
        page.click("#run")
        wait_status(page, "succeeded")
        assert "Hello from a sandboxed isolate" in page.locator("#console").inner_text()
        page.select_option("#tenant", "dormant")
        page.click("#run")
        wait_status(page, "refused")
        shot(page, "fix-01-suspended")
        return (page.locator("#console").inner_text(), page.locator("#outcome .error-code").inner_text(),
                page.locator("#outcome").inner_text())

    console, code, outcome = browser.run(steps)
    assert console == "" and code == "PERMISSION_DENIED" and "This tenant is suspended" in outcome


def test_cant_reach_loopback_without_the_refusal_being_recorded_as_denied(run_block, make_tenant, server):
    """A block probing the server's own loopback (SSRF) is refused by the network handler
    after DNS; the audit row says `denied`, as the policy's own refusals do."""
    acme = make_tenant("acme", "Interactive")
    run = run_block(acme, "try { await symposium.network.fetch('http://127.0.0.1:%d/admin/'); }\n"
                          "catch (e) { console.log(e.code); }\n" % server.port)
    run.refresh_from_db()
    assert run.console == "PERMISSION_DENIED", (run.status, run.error)
    row = AuditLog.objects.get(run_id=run.pk, operation="network.fetch")
    assert (row.outcome, row.error_code) == ("denied", "PERMISSION_DENIED")
    assert "only public addresses can be reached" in row.message
