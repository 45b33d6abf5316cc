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


@pytest.fixture
def admin_link(base_url, db):
    """What `manage.py loginlink` prints: a one-time link that logs the superuser in."""
    from console.login import make_login_token

    root = get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123")
    return f"{base_url}/login/{make_login_token(root)}/"


def test_it_says_there_is_no_job_queue_without_redis(browser, base_url, admin_link, settings):
    if settings.REDIS_URL:
        pytest.skip("with Redis configured, /django-rq/ is django-rq's own dashboard")

    def steps(context):
        page = context.new_page()
        page.goto(admin_link)
        response = page.goto(f"{base_url}/django-rq/")
        shot(page, "fix-02-no-job-queue")
        return response.status, page.locator("#content-main").inner_text(), page.content()

    status, text, html = browser.run(steps)
    assert status == 200 and "There is no job queue" in text and "6379" not in html


def audit_rows(people, count=60):
    from datetime import timedelta

    from django.utils import timezone

    run = BlockRun.objects.create(tenant=people["acme"], user=people["alice"], code="// calls", status="succeeded", source="runner")
    now = timezone.now()
    AuditLog.objects.bulk_create(
        AuditLog(time=now - timedelta(milliseconds=37 * i), tenant=people["acme"], tenant_slug="acme", run=run, user=people["alice"],
                 capability="process", operation="process.execute", target=f"ls -la /tmp/a/rather/long/folder/name/{i}",
                 outcome="allowed", duration_ms=12.5, bytes_in=10, bytes_out=2048)
        for i in range(count))
    return run


def test_it_fits_the_audit_list_at_1440_px_with_seconds_and_a_user_column_and_filter(browser, base_url, admin_link, people):
    audit_rows(people)
    one = AuditLog.objects.first()

    def steps(context):
        page = context.new_page()
        page.goto(admin_link)
        page.goto(f"{base_url}/admin/tenants/auditlog/")
        shot(page, "fix-04-audit-list")
        fits = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right"
                             " <= document.querySelector('#changelist-filter').getBoundingClientRect().left + 1"
                             " && document.documentElement.scrollWidth <= innerWidth")
        headers = page.locator("#result_list thead th").all_inner_texts()
        first_time = page.locator("#result_list td.field-when, #result_list th.field-when").first.inner_text()
        user_filter = page.locator("#changelist-filter").inner_text()
        page.goto(f"{base_url}/admin/tenants/auditlog/{one.pk}/change/")
        return fits, headers, first_time, user_filter, page.title(), page.locator("#content h2").first.inner_text()

    fits, headers, first_time, user_filter, title, heading = browser.run(steps)
    assert fits
    assert "USER" in [h.strip().upper() for h in headers]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", first_time.strip()), first_time
    assert "By user" in user_filter and "alice" in user_filter
    # The title names the operation once: process.execute, not process.process.execute.
    assert "process.execute" in heading and "process.process" not in heading + title


def test_it_shows_a_runs_code_and_console_monospaced_in_the_admin(browser, base_url, admin_link, people):
    run = BlockRun.objects.create(tenant=people["acme"], user=people["alice"], status="succeeded", source="runner",
                                  code="console.log('x');\nexport default () => 1;", console="x\n[warn] careful", result=1,
                                  console_times=[4, 1250])

    def steps(context):
        page = context.new_page()
        page.goto(admin_link)
        page.goto(f"{base_url}/admin/tenants/blockrun/{run.pk}/change/")
        shot(page, "fix-05-run-admin", full_page=True)
        fonts = {name: page.evaluate(f"getComputedStyle(document.querySelector('.field-{name}_shown pre')).fontFamily")
                 for name in ("code", "console")}
        return fonts, page.locator(".field-code_shown pre").inner_text(), page.locator(".field-console_shown pre").inner_text()

    fonts, code, console = browser.run(steps)
    assert all("mono" in font.lower() for font in fonts.values()), fonts
    assert code == "console.log('x');\nexport default () => 1;"
    # Each console entry with when it was printed, from the run's start.
    assert console.splitlines() == ["  +0.004s  x", "  +1.250s  [warn] careful"], console


def test_it_titles_the_admin_as_symposiums(browser, base_url, admin_link):
    def steps(context):
        page = context.new_page()
        page.goto(admin_link)
        page.wait_for_url(re.compile(r"/admin/$"))
        return page.title(), page.locator("#site-name").inner_text()

    title, header = browser.run(steps)
    assert header == "Symposium administration" and "Symposium admin" in title
    assert "Django" not in header + title


@pytest.mark.parametrize("width", [900, 390])
def test_it_lays_the_runner_out_at_narrow_widths(browser, base_url, people, width):
    def steps(context):
        page = open_runner(context, base_url)
        page.select_option("#examples", "hello")
        page.click("#run")
        wait_status(page, "succeeded")
        page.set_viewport_size({"width": width, "height": 844})
        drawn(page)
        shot(page, f"fix-06-runner-{width}", full_page=True)
        # Nothing sticks out sideways, and every control and pane is inside the screen.
        return page.evaluate("""() => {
            const outside = [];
            for (const node of document.querySelectorAll('header *, .toolbar > *, .blockbar > *, .figures > div, .tabs, .run-head > *, .runner > *')) {
                const box = node.getBoundingClientRect();
                if (box.width && (box.left < -1 || box.right > innerWidth + 1)) outside.push(node.id || node.className || node.tagName);
            }
            return {scroll: document.documentElement.scrollWidth, outside,
                    console: document.getElementById('tab-console').getBoundingClientRect().height};
        }""")

    layout = browser.run(steps)
    assert layout["scroll"] <= width and layout["outside"] == [], layout
    assert layout["console"] >= 200, layout


def test_it_keeps_following_the_console_under_a_flood(browser, base_url, people):
    """Lines arriving in bursts faster than they are drawn, as a block printing in a loop
    sends them: 8,000 lines, 400 a frame. The console stays at its newest line all along
    (although lines leave its top and the note about them appears above), and stays
    where the reader puts it once they scroll up."""
    def steps(context):
        page = open_runner(context, base_url)
        gaps = page.evaluate("""async () => {
            const view = window.symposiumConsole, scroller = document.getElementById('tab-console'), gaps = [];
            const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
            for (let burst = 0; burst < 20; burst++) {
                for (let i = 0; i < 400; i++) view.push({ level: 'log', text: `line ${burst * 400 + i} ` + 'x'.repeat(200), time: '+0.000s' });
                await frame(); await frame();
                gaps.push(scroller.scrollHeight - scroller.clientHeight - scroller.scrollTop);
            }
            return gaps;
        }""")
        shot(page, "fix-08-console-follows")
        last = page.locator("#console .line").last.inner_text()
        page.evaluate("document.getElementById('tab-console').scrollTop = 0")
        page.evaluate("""async () => {
            window.symposiumConsole.push({ level: 'log', text: 'one more', time: '' });
            await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        }""")
        return gaps, last, page.evaluate("document.getElementById('tab-console').scrollTop")

    gaps, last, top = browser.run(steps)
    assert max(gaps) <= 2, gaps
    assert "line 7999" in last and top == 0


def test_it_logs_each_line_of_the_development_server_once(settings, capfd):
    """runserver (Daphne's) logs requests to `django.channels.server`, Django its 404s to
    `django.request`; with Django's default logging under ours, each line came twice."""
    import logging

    from django.utils.log import configure_logging

    settings.DEBUG = True  # runserver's case: Django's own console handler is on in DEBUG
    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    try:
        logging.getLogger("django.channels.server").info("HTTP GET /runner/ 200 [0.01, 127.0.0.1:5000]")
        logging.getLogger("django.request").warning("Not Found: /nope")
        err = capfd.readouterr().err
    finally:
        configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    assert err.count("HTTP GET /runner/ 200") == 1 and err.count("Not Found: /nope") == 1, err


def test_it_prints_a_login_link_to_the_port_the_server_listens_on(browser, server, people, monkeypatch):
    import io

    from django.core.management import call_command

    monkeypatch.setenv("PORT", str(server.port))  # as the Procfile's server is told its port
    out, err = io.StringIO(), io.StringIO()
    call_command("loginlink", username="root", stdout=out, stderr=err)
    link = re.search(r"http://\S+", out.getvalue()).group(0)
    assert link.startswith(f"http://127.0.0.1:{server.port}/login/") and err.getvalue() == ""

    def steps(context):
        page = context.new_page()
        page.goto(link)
        page.wait_for_url(re.compile(r"/admin/$"))
        # Used once, the link is refused on a page of the site's own style.
        page.goto(link)
        shot(page, "fix-12-login-link-used")
        box = page.locator("#login-link-invalid")
        return box.inner_text(), box.evaluate("(node) => [getComputedStyle(node).borderRadius, getComputedStyle(node).backgroundColor]"), \
            page.locator(".topbar .brand").count()

    text, (radius, background), brand = browser.run(steps)
    assert "This login link is not valid" in text and radius == "12px" and background == "rgb(255, 255, 255)" and brand == 1

    monkeypatch.delenv("PORT")
    call_command("loginlink", username="root", port=9, stdout=out, stderr=err)  # nothing listens on port 9
    assert "127.0.0.1:9/login/" in out.getvalue() and "Nothing answers at http://127.0.0.1:9 yet" in err.getvalue()


def test_it_explains_the_examples_and_offers_only_what_the_profile_allows(browser, base_url, people, make_tenant):
    Membership.objects.create(tenant=make_tenant("datawise", "Data"), user=people["alice"], role="owner")

    def steps(context):
        page = open_runner(context, base_url)
        # An example that only defines functions (and the driver that calls them): the
        # note says so, and the console says the block printed nothing.
        page.select_option("#examples", "interactive-dashboard")
        dashboard_note = page.locator("#example-note").inner_text()
        page.click("#run")
        wait_status(page, "succeeded")
        silent = page.locator("#console").inner_text()
        acme_canvas = page.locator("#examples option[value=canvas]").is_disabled()
        acme_database = page.locator("#examples option[value=database]").is_disabled()  # Interactive: no database
        # The database example needs tables made by another example: the note says which.
        page.select_option("#tenant", "datawise")
        page.select_option("#examples", "database")
        database_note = page.locator("#example-note").inner_text()
        # A Basic tenant may not draw: the menu does not offer the canvas examples.
        page.select_option("#tenant", "basic-co")
        option = page.locator("#examples option[value=canvas]")
        shot(page, "fix-14-examples")
        return (dashboard_note, silent, database_note, acme_canvas and not acme_database, option.is_disabled(), option.inner_text(),
                option.get_attribute("title"), page.locator("#examples option[value=hello]").is_disabled())

    dashboard_note, silent, database_note, acme_canvas, disabled, label, why, hello_disabled = browser.run(steps)
    assert "only defines functions" in dashboard_note and "prints nothing" in dashboard_note
    assert "The block printed nothing" in silent
    assert "Set up the example database tables" in database_note and "no such table: users" in database_note
    assert not acme_canvas and disabled and not hello_disabled
    assert "not allowed: Basic" in label and why == "The Basic profile does not allow canvases."


def test_it_shows_the_overviews_labels_whole(browser, base_url, admin_link, people):
    from datetime import timedelta

    from django.utils import timezone

    run = BlockRun.objects.create(tenant=people["basic"], user=people["alice"], code="//", status="succeeded", source="runner")
    AuditLog.objects.bulk_create(
        AuditLog(time=timezone.now() - timedelta(minutes=i), tenant=people["basic"], tenant_slug="basic-co", run=run,
                 capability="network", operation="network.fetch", target=f"api{i}.example.com", outcome="allowed",
                 duration_ms=100 + i, bytes_out=1000 * (i + 1))
        for i in range(12))

    def steps(context):
        page = context.new_page()
        page.goto(admin_link)
        page.goto(f"{base_url}/admin/overview/")
        shot(page, "fix-10-overview-labels", full_page=True)
        return page.evaluate("""() => [...document.querySelectorAll('#chart-slowest text.label, #chart-largest text.label')].map((t) => {
            const box = t.getBBox(), svg = t.ownerSVGElement.viewBox.baseVal;
            return [t.textContent, box.x >= svg.x - 0.5];
        })""")

    labels = browser.run(steps)
    assert len(labels) == 20
    assert all(inside for _, inside in labels), labels
    assert all("…" not in text and re.search(r"api\d+\.example\.com$", text) for text, _ in labels), labels


def test_it_dates_a_past_run(browser, base_url, people):
    from datetime import datetime, timezone as tz

    created = datetime(2026, 3, 14, 9, 26, 53, tzinfo=tz.utc)
    BlockRun.objects.create(tenant=people["acme"], user=people["alice"], code="console.log('pi');", status="succeeded",
                            name="pi.js", console="pi", source="runner", created=created, started=created, finished=created)

    def steps(context):
        page = open_runner(context, base_url)
        item = page.locator("#history-list li").first
        when = item.locator(".when").inner_text()
        item.click()
        wait_status(page, "succeeded")
        return when, page.locator("#run-when").inner_text(), page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")

    when, started, zone = browser.run(steps)
    # Older than a day: the history shows the date and time, not a bare date; the open
    # run says when it started, to the second (in the browser's time zone).
    assert "Mar 14" in when and re.search(r"\d\d:\d\d", when), when
    assert "Mar 14, 2026" in started and re.search(r"\d\d:26:53", started), (started, zone)


def test_it_shows_when_each_line_of_a_past_run_was_printed(browser, base_url, people):
    code = "console.log('first');\nawait new Promise((ok) => setTimeout(ok, 600));\nconsole.warn('second\\nof two lines');\n"

    def steps(context):
        page = open_runner(context, base_url)
        set_code(page, code)
        page.click("#run")
        wait_status(page, "succeeded")
        page.reload()
        page.wait_for_selector("#conn.up")
        page.locator("#history-list li").first.click()
        wait_status(page, "succeeded")
        page.wait_for_selector("#console .line .t")
        shot(page, "fix-past-console-times")
        return page.evaluate("""() => [...document.querySelectorAll('#console .line')].map((row) => [
            row.querySelector('.t').textContent, row.querySelector('.x').textContent, row.title])"""), \
            page.locator("#block-count").is_visible()

    rows, block_count_shown = browser.run(steps)
    assert not block_count_shown  # unsaved code: the "Saved block" tab shows no empty count
    texts = [text for _, text, _ in rows]
    assert "first" in texts and "second\nof two lines" in texts, rows
    times = {text: float(t.strip("+s")) for t, text, _ in rows if text in ("first", "second\nof two lines")}
    assert times["first"] < 0.5 and 0.55 <= times["second\nof two lines"] - times["first"] < 5, rows
    assert all(re.search(r"\d\d:\d\d:\d\d", title) for _, text, title in rows if text == "first"), rows


def test_cant_date_console_lines_before_the_start_after_their_arrival_or_out_of_order(run_block, make_tenant):
    """A block that sets its own clock (Date.now) gets its lines dated by the platform:
    held between the run's start, the previous line and the line's arrival."""
    acme = make_tenant("acme", "Interactive")
    code = ("const real = Date.now;\n"
            "Date.now = () => 0; console.log('epoch');\n"
            "Date.now = () => real() + 1e9; console.log('future');\n"
            "Date.now = () => real() - 60000; console.log('past');\n"
            "Date.now = () => NaN; console.log('nan');\n")
    run = run_block(acme, code)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    entries = run.console_entries()
    assert [e["text"] for e in entries] == ["epoch", "future", "past", "nan"]
    times = [e["ms"] for e in entries]
    took = (run.finished - run.started).total_seconds() * 1000
    assert all(isinstance(ms, int) and 0 <= ms <= took + 50 for ms in times), (times, took)
    assert times == sorted(times), times
