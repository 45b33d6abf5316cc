"""The runner page and the admins' view in a real browser: headless Chromium (Debian's)
driven by Playwright, against the real ASGI application served by an in-process Daphne
(HTTP and websockets), on the test database, with real isolates.

Each step leaves a screenshot in test-artifacts/screenshots/ to look at.

Run with: .venv/bin/pytest tests/test_browser_runner.py -q
"""

import concurrent.futures
import queue
import random
import re
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tenants.models import AuditLog, BlockRun, Membership, PolicyOverride
from tenants.ratelimit import reset_limiter

pytestmark = [
    pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True),
    # Development's static file view answers with a file iterator that ASGI reads in a thread.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
EXAMPLES = ROOT / "examples"
TIMEOUT = 30_000  # ms, for anything a run has to finish first

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (scripts/setup installs it when "
                "SYMPOSIUM_BROWSER_TESTS=1)", allow_module_level=True)


class BrowserThread:
    """Headless Chromium in a thread of its own. Playwright's sync API keeps an event
    loop running in the thread that uses it, and Django refuses database access from a
    thread with a running loop; so the browser lives in another thread, and a test hands
    it its browser steps (a function of a fresh browser context) while the database
    stays in the test's thread."""

    def __init__(self):
        self.requests = queue.Queue()
        self.started = concurrent.futures.Future()
        self.thread = threading.Thread(target=self.serve, name="playwright", daemon=True)
        self.thread.start()
        self.started.result(60)

    def serve(self):
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM),
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update"],
                )
                self.started.set_result(True)
                while (request := self.requests.get()) is not None:
                    steps, done = request
                    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1,
                                                  accept_downloads=True)
                    context.set_default_timeout(15_000)
                    try:
                        done.set_result(steps(context))
                    except BaseException as e:  # handed to the test's thread
                        done.set_exception(e)
                    finally:
                        # Let the pages' last requests (a history refresh) end before the
                        # test's database goes away.
                        for page in context.pages:
                            try:
                                page.wait_for_function("!window.symposiumRunner || window.symposiumRunner.fetching === 0", timeout=3000)
                            except Exception:
                                pass
                        context.close()
                browser.close()
        except BaseException as e:
            if not self.started.done():
                self.started.set_exception(e)
            raise

    def run(self, steps, timeout=120):
        """Run steps(context) in a fresh browser context; returns what they return."""
        done = concurrent.futures.Future()
        self.requests.put((steps, done))
        return done.result(timeout)

    def close(self):
        self.requests.put(None)
        self.thread.join(30)


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    thread = BrowserThread()
    yield thread
    thread.close()


@pytest.fixture
def server(settings):
    from isolates.server import local_server

    # Calls run inline: the page shows what the broker reports either way, and the RQ
    # path has its own tests with their own workers.
    settings.SYMPOSIUM_RQ_CAPABILITIES = []
    reset_limiter()
    server = local_server()
    yield server

    async def stop_all():
        from isolates.runs import service_for_port

        await service_for_port(server.port).stop_all()

    # No run outlives its test (its supervisor would write to the next test's database).
    server.call(stop_all(), 30)
    reset_limiter()


@pytest.fixture
def base_url(server):
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def people(make_tenant, profiles):
    User = get_user_model()
    alice = User.objects.create_user("alice", "alice@example.org", "alice-password-123")
    acme = make_tenant("acme", "Interactive")
    shutil.copytree(EXAMPLES / "storage", acme.storage_root(), dirs_exist_ok=True)
    Membership.objects.create(tenant=acme, user=alice, role="owner")
    basic = make_tenant("basic-co", "Basic")
    Membership.objects.create(tenant=basic, user=alice, role="member")
    return {"alice": alice, "acme": acme, "basic": basic}


def shot(page, name, full_page=False):
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def log_in(context, base_url, username, password):
    page = context.new_page()
    page.goto(f"{base_url}/runner/")
    assert "/login/" in page.url  # login required
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    return page


def open_runner(context, base_url, shots=False):
    page = log_in(context, base_url, "alice", "alice-password-123")
    if shots:
        shot(page, "01-login")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/runner/"))
    page.wait_for_selector(".cm-editor")
    page.wait_for_selector("#conn.up")  # the websocket is open
    return page


def set_code(page, code):
    page.evaluate("(code) => { const v = window.symposiumEditor; v.dispatch({changes: {from: 0, to: v.state.doc.length, insert: code}}); }", code)


def wait_status(page, text, timeout=TIMEOUT):
    page.wait_for_function("(text) => document.getElementById('status').textContent === text", arg=text, timeout=timeout)
    drawn(page)


def drawn(page):
    """Waits until lines and calls already received are drawn (the page draws them in
    batches, on the next animation frame)."""
    page.evaluate("new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")


def test_it_runs_the_seed_canvas_example_and_shows_the_image(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url, shots=True)
        shot(page, "02-runner")
        # The editor highlights JavaScript: keywords and strings get their own spans.
        assert page.locator(".cm-content .cm-line span").count() > 5

        page.select_option("#examples", "canvas")
        assert page.evaluate("window.symposiumEditor.state.doc.toString()") == (EXAMPLES / "seed/canvas.js").read_text()
        page.click("#run")
        wait_status(page, "succeeded")
        assert page.locator("#images img").count() == 1
        assert page.evaluate("[document.querySelector('#images img').naturalWidth, document.querySelector('#images img').naturalHeight]") == [800, 600]
        console = page.locator("#console").inner_text()
        assert "Created canvas:" in console and re.search(r"Exported \d+ bytes of PNG data", console)
        assert page.locator("#calls-count").inner_text() == "3"
        assert page.locator("#fig-calls").inner_text() == "3"
        assert page.locator("#fig-duration").inner_text() != "–"
        shot(page, "03-canvas-image")
        page.click("[data-tab=calls]")
        assert page.locator("#calls tr").count() == 3
        assert page.locator("#calls tr .badge.allowed").count() == 3
        shot(page, "04-canvas-calls")

        # A reload shows the run in the tenant's history; opening it shows its record.
        page.reload()
        item = page.locator("#history-list li").first
        item.wait_for()
        run_id = item.get_attribute("data-run")
        item.click()
        wait_status(page, "succeeded")
        assert "Created canvas:" in page.locator("#console").inner_text()
        assert page.locator("#fig-calls").inner_text() == "3"
        assert page.locator("#calls tr").count() == 3
        shot(page, "05-history")
        return run_id

    run_id = browser.run(steps)
    run = BlockRun.objects.get(pk=run_id)
    assert (run.tenant, run.user, run.source, run.status) == (people["acme"], people["alice"], "runner", "succeeded")


def test_it_writes_files_and_links_them_for_download(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        page.select_option("#examples", "interactive-dashboard")
        page.click("#run")
        wait_status(page, "succeeded")
        link = page.locator("#file-list a")
        assert link.count() == 1 and link.inner_text().startswith("charts/dashboard_")
        assert page.locator("#images img").count() == 1
        shot(page, "06-dashboard-files")
        with page.expect_download() as download:
            link.click()
        return link.inner_text(), Path(download.value.path()).read_bytes()

    name, content = browser.run(steps)
    assert content == (people["acme"].storage_root() / name).read_bytes() and content.startswith(b"\x89PNG")


def test_it_stops_a_runaway_block(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        set_code(page, "console.log('about to spin');\nwhile (true) {}\n")
        page.click("#run")
        page.wait_for_selector("#console .line.log")
        wait_status(page, "running")
        assert page.is_enabled("#stop") and page.is_disabled("#run")
        started = time.monotonic()
        page.click("#stop")
        wait_status(page, "stopped", timeout=10_000)
        assert time.monotonic() - started < 5
        assert page.locator("#outcome .error-code").inner_text() == "KILLED"
        assert page.is_enabled("#run") and page.is_disabled("#stop")
        shot(page, "07-stopped")

    browser.run(steps)
    run = BlockRun.objects.get(tenant=people["acme"])
    assert (run.status, run.console) == ("killed", "about to spin")


def test_it_shows_permission_denied_for_a_basic_tenant(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        page.select_option("#tenant", "basic-co")
        # The menu does not offer the canvas example to a Basic tenant; pasted code runs.
        assert page.locator("#examples option[value=canvas]").is_disabled()
        set_code(page, (EXAMPLES / "seed/canvas.js").read_text())
        page.click("#run")
        wait_status(page, "failed")
        assert page.locator("#outcome .error-code").inner_text() == "PERMISSION_DENIED"
        assert "The Basic profile does not allow canvases." in page.locator("#outcome").inner_text()
        page.click("[data-tab=calls]")
        row = page.locator("#calls tr").first
        assert "canvas.createCanvas" in row.inner_text() and row.locator(".badge.denied").count() == 1
        assert "PERMISSION_DENIED" in row.inner_text()
        shot(page, "08-basic-denied")

    browser.run(steps)
    assert BlockRun.objects.get(tenant=people["basic"]).error_code == "PERMISSION_DENIED"


def test_it_validates_the_input_before_running(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        page.select_option("#examples", "hello")
        page.fill("#input", '{"name": "Ada",}')
        assert page.is_disabled("#run")
        assert page.locator("#input-state").inner_text().startswith("✗ Not valid JSON")
        shot(page, "09-invalid-input")
        page.fill("#input", '{"name": "Grace"}')
        page.click("#run")
        wait_status(page, "succeeded")
        assert '"greeting": "Hello, Grace!"' in page.locator("#outcome").inner_text()

    browser.run(steps)


def printing_block(page, code, name):
    """Runs a block that prints a lot; returns how long the page took and how slowly it
    answered meanwhile."""
    set_code(page, code)
    started = time.monotonic()
    page.click("#run")
    slowest = 0.0
    while page.locator("#status").text_content() in ("starting", "running") and time.monotonic() - started < 30:
        t = time.monotonic()
        page.evaluate("1 + 1")
        slowest = max(slowest, time.monotonic() - t)
    try:
        page.wait_for_function("['succeeded', 'failed', 'timed out', 'stopped'].includes(document.getElementById('status').textContent)",
                               timeout=TIMEOUT)
    finally:
        drawn(page)
        shot(page, name)
    assert page.locator("#status").text_content() == "succeeded", page.locator("#outcome").inner_text()
    return time.monotonic() - started, slowest


def test_it_stays_responsive_when_a_block_prints_10_mb(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        elapsed, slowest = printing_block(
            page, "const chunk = 'x'.repeat(1024 * 1024);\nfor (let i = 0; i < 10; i++) console.log(chunk);\n"
                  "export default () => 'printed 10 MB';\n", "10-ten-megabytes")
        assert "more than this tenant's console cap" in page.locator("#console-note").inner_text()
        assert "Console output reached this tenant's cap" in page.locator("#console").inner_text()
        # A megabyte line is folded; unfolding it draws a bounded part of it.
        fold = page.locator("#console .line .more").first
        assert "more characters" in fold.inner_text()
        fold.click()
        assert 20_000 <= len(page.locator("#console .line.log .x").first.inner_text()) < 21_000
        return elapsed, slowest

    elapsed, slowest = browser.run(steps)
    print(f"\n10 MB in 1 MB lines: finished on the page in {elapsed:.2f} s, slowest page response {slowest * 1000:.0f} ms")
    assert slowest < 1.0 and elapsed < 20


def test_it_stays_responsive_when_a_block_prints_ten_thousand_lines(browser, base_url, people):
    def steps(context):
        page = open_runner(context, base_url)
        elapsed, slowest = printing_block(
            page, "const line = 'x'.repeat(1023);\nfor (let i = 0; i < 10240; i++) console.log(`${i} ${line}`);\n"
                  "export default () => 'printed 10 MB';\n", "10-ten-thousand-lines")
        assert "more than this tenant's console cap" in page.locator("#console-note").inner_text()
        assert page.locator("#console .line").count() <= 2000
        assert "Console output reached this tenant's cap" in page.locator("#console").inner_text()
        return elapsed, slowest

    elapsed, slowest = browser.run(steps)
    print(f"\n10 MB in 1 KB lines: finished on the page in {elapsed:.2f} s, slowest page response {slowest * 1000:.0f} ms")
    assert slowest < 1.0 and elapsed < 20


def test_it_runs_in_two_tabs_at_once(browser, base_url, people):
    def steps(context):
        first = open_runner(context, base_url)
        second = context.new_page()
        second.goto(f"{base_url}/runner/")
        second.wait_for_selector("#conn.up")
        code = "await new Promise((r) => setTimeout(r, 600));\nexport default (input) => `tab ${input.tab}`;\n"
        for number, page in enumerate((first, second), 1):
            set_code(page, code)
            page.fill("#input", f'{{"tab": {number}}}')
        first.click("#run")
        second.click("#run")
        wait_status(first, "succeeded")
        wait_status(second, "succeeded")
        assert '"tab 1"' in first.locator("#outcome").inner_text()
        assert '"tab 2"' in second.locator("#outcome").inner_text()

    browser.run(steps)
    runs = BlockRun.objects.filter(status="succeeded")
    assert sorted(r.result for r in runs) == ["tab 1", "tab 2"]


def test_it_lets_a_viewer_look_but_not_run(browser, base_url, people):
    victor = get_user_model().objects.create_user("victor", "victor@example.org", "victor-password-123")
    Membership.objects.create(tenant=people["acme"], user=victor, role="viewer")
    BlockRun.objects.create(tenant=people["acme"], user=people["alice"], code="export default () => 1;", status="succeeded",
                            name="earlier.js", console="from before", result=1, source="runner")

    def steps(context):
        page = log_in(context, base_url, "victor", "victor-password-123")
        page.click("button[type=submit]")
        page.wait_for_selector("#conn.up")
        assert page.is_disabled("#run") and page.is_visible("#viewer-note")
        page.click("#history-list li")
        wait_status(page, "succeeded")
        assert "from before" in page.locator("#console").inner_text()

    browser.run(steps)


def make_activity(tenants, alice):
    """A week of runs and calls for the overview's charts, made directly in the tables."""
    rng = random.Random(6)
    now = timezone.now()
    operations = [("files", "readFile", "data/config.json"), ("files", "writeFile", "output/result.txt"),
                  ("network", "network.fetch", "api.example.com"), ("canvas", "canvas.exportImage", "c1"),
                  ("database", "database.query", "sql:3f2a9c1d SELECT *")]
    rows = []
    for tenant, weight in tenants:
        for _ in range(weight * 12):
            created = now - timedelta(hours=rng.uniform(0, 7 * 24))
            status = rng.choices(["succeeded", "failed", "timed_out", "killed"], [85, 10, 3, 2])[0]
            run = BlockRun.objects.create(tenant=tenant, user=alice, code="// synthetic", status=status, source="runner",
                                          created=created, started=created, finished=created + timedelta(seconds=rng.uniform(0.1, 4)),
                                          error_code="" if status == "succeeded" else "TIMEOUT")
            for _ in range(rng.randint(2, 9)):
                capability, operation, target = rng.choice(operations)
                outcome = rng.choices(["allowed", "failed", "denied"], [90, 4, 6])[0]
                code = "" if outcome == "allowed" else rng.choice(["RATE_LIMITED", "PERMISSION_DENIED", "UPSTREAM_ERROR"])
                rows.append(AuditLog(time=created + timedelta(seconds=rng.uniform(0, 3)), tenant=tenant, tenant_slug=tenant.slug,
                                     run=run, user=alice, capability=capability, operation=operation, target=target,
                                     outcome=outcome, error_code=code, duration_ms=rng.lognormvariate(2.5, 1.2),
                                     bytes_out=int(rng.lognormvariate(8, 2))))
    AuditLog.objects.bulk_create(rows)


def test_it_opens_the_admin_overview(browser, base_url, people, make_tenant, settings):
    from console.login import make_login_token

    root = get_user_model().objects.create_superuser("root", "root@example.org", "root-password-123")
    globex = make_tenant("globex", "Data")
    PolicyOverride.objects.create(tenant=people["acme"], setting="max_file_size", value=str(20 * 1024 * 1024))
    PolicyOverride.objects.create(tenant=people["acme"], setting="network_rate_per_minute", value="90")
    make_activity([(people["acme"], 5), (globex, 3), (people["basic"], 1)], people["alice"])
    login_link = f"{base_url}/login/{make_login_token(root)}/"  # what `manage.py loginlink` prints
    acme_page = f"{base_url}/admin/tenants/tenant/{people['acme'].pk}/change/"

    def steps(context):
        page = context.new_page()
        page.goto(login_link)
        page.wait_for_url(re.compile(r"/admin/$"))
        shot(page, "11-admin-index")
        page.click("text=Platform overview")
        page.wait_for_url(re.compile(r"/admin/overview/"))
        assert page.locator("svg.chart").count() >= 6
        assert page.locator("#chart-runs svg rect").count() > 10
        assert page.locator("#chart-denials svg rect").count() > 0
        assert page.locator("#chart-slowest svg rect").count() == 10
        shot(page, "12-admin-overview", full_page=True)

        page.goto(acme_page)
        overridden = page.locator("#tenant-policy tr.overridden")
        assert overridden.count() == 2
        assert "20.0 MB" in overridden.first.inner_text()
        assert page.locator("#tenant-glance .meter").count() == 1
        shot(page, "13-admin-tenant", full_page=True)

        page.goto(f"{base_url}/admin/")
        page.click("text=Job queues")
        if settings.REDIS_URL:
            assert page.locator("text=capabilities").count() >= 1
        else:
            assert "There is no job queue" in page.locator("#content-main").inner_text()
        shot(page, "14-job-queues")

    browser.run(steps)


def test_it_follows_a_run_again_after_the_connection_drops(browser, base_url, people, settings):
    settings.SYMPOSIUM_KILL_RUNS_ON_DISCONNECT = False  # the default: a run outlives its page

    def steps(context):
        page = open_runner(context, base_url)
        set_code(page, "console.log('before the drop');\nawait new Promise((r) => setTimeout(r, 1500));\n"
                       "console.log('after the drop');\nexport default () => 'survived';\n")
        page.click("#run")
        page.wait_for_selector("#console .line.log")
        page.evaluate("window.symposiumRunner.ws.close()")  # the network hiccups
        page.wait_for_selector("#conn.down")
        page.wait_for_selector("#conn.up")
        wait_status(page, "succeeded")
        console = page.locator("#console").inner_text()
        assert "before the drop" in console and "after the drop" in console
        assert '"survived"' in page.locator("#outcome").inner_text()

    browser.run(steps)
    assert BlockRun.objects.get(tenant=people["acme"]).console == "before the drop\nafter the drop"
