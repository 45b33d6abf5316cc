"""Benchmark: capability round trips from inside a block, next to their floors.

    .venv/bin/python bench/capabilities.py [--calls 1000] [--redis redis://127.0.0.1:6379/2]

For each capability, the time a block waits for one call (p50 / p99, in ms) on the
inline path, and on the RQ path when --redis is given (a real `rqworker` process), next
to the floor: the same work done directly in Python, without a block, a broker or a
queue.

- database.query: `SELECT id, name FROM items WHERE id = ?` on the tenant's SQLite
  database; floor: the same query with the sqlite3 driver (a connection per query, as
  the handler opens one per call, and a kept connection).
- network.fetch: GET of a small JSON document from a server on 127.0.0.1; floor: the
  same GET with httpx on a new connection (the handler opens one per request).
- canvas: export of a 1920x1080 canvas holding 10,000 ops to PNG; floor: Pillow
  ImageDraw drawing the same shapes and saving a PNG, each export alternating with a
  floor run so that a shared machine's load falls on both alike.
- process.execute: `echo hello` in the sandbox; floor: subprocess.run(["echo", "hello"]).
  Then the same forked by the spawner (the default) and by the server itself
  (SYMPOSIUM_PROCESS_SPAWNER off), alternating.
- kv.get: one small JSON value; floor: the same SELECT on the platform database (Django's
  connection, a kept one).
- email.send: a short message with a 1 KB attachment to an SMTP server on 127.0.0.1
  (aiosmtpd); floor: smtplib sending the same message on a new connection (the handler
  opens one per message).
- image.transform: a 1920x1080 PNG resized to 640 wide and made grayscale, written as
  PNG; floor: Pillow doing the same from the file's bytes to PNG bytes.
- realtime.publish: a small message to a channel with one listener; floor: a bare
  channel-layer group_send of the same event.

It uses a throwaway SQLite database and storage folder, never the project's own.
"""

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throwaway import throwaway_platform  # noqa: E402
from tests.support.tls_servers import LocalServer  # noqa: E402  (a real HTTP server for the network calls)


def percentiles(values):
    values = sorted(values)
    p50 = statistics.median(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return f"p50 {p50:9.3f} ms   p99 {p99:9.3f} ms   (n={len(values)})"


def timed(fn, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


LOOP = """
const times = [];
for (let i = 0; i < %(n)d + 10; i++) {
  const t0 = performance.now();
  await %(call)s;
  if (i >= 10) times.push(performance.now() - t0);
}
export default () => times;
"""

CANVAS = """
const ops = %(ops)s;
const times = [];
for (let i = 0; i < %(n)d; i++) {
  const c = await symposium.canvas.createCanvas(1920, 1080);
  await symposium.canvas.draw(c.canvasId, ops);
  const t0 = performance.now();
  const image = await symposium.canvas.exportImage(c.canvasId, 'png');
  times.push(performance.now() - t0);
}
export default () => times;
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--exports", type=int, default=10)
    parser.add_argument("--redis", default="", help="a Redis URL to also measure the RQ path (its database is flushed)")
    options = parser.parse_args()

    capabilities = ("files", "network", "canvas", "database", "process", "kv", "image", "realtime")
    overrides = {f"{c}_rate_per_minute": 0 for c in capabilities}
    tenant = throwaway_platform(options.redis, allow_hosts=["127.0.0.1"], overrides={
        **overrides, "canvas_max_per_run": 1000, "email_per_hour": 10_000_000})
    tenant.email_sender = "bench@bench.example"
    tenant.save()

    from django.conf import settings

    from tests.support.platform import free_port
    from symposium.settings import email_settings

    # The SMTP server in a process of its own, as a relay is: in this one its thread
    # would compete with the server's for the GIL at every SMTP round trip.
    smtp_port = free_port()
    relay = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l", f"127.0.0.1:{smtp_port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    # The relay for this process, and (through the environment) for the RQ worker.
    os.environ["SYMPOSIUM_EMAIL_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    for name, value in email_settings(os.environ["SYMPOSIUM_EMAIL_URL"]).items():
        setattr(settings, name, value)

    http = LocalServer()

    from django.conf import settings

    from isolates.runs import RunService
    from isolates.server import local_server

    server = local_server()
    service = None

    async def make_service():
        svc = RunService(server.port, warm_size=2)
        await svc.warm_up()
        return svc

    service = server.call(make_service())

    def block(code):
        async def run():
            started = await service.start(tenant, code, name="bench.js")
            return await service.wait(started.id)

        run = server.call(run(), 3600)
        if run.status != "succeeded":
            raise SystemExit(f"the benchmark block failed: {run.error_code} {run.error}")
        return run.result

    n = options.calls
    url = http.url("/json")
    setup_sql = block(
        "await symposium.database.query('CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)', []);"
        "for (let i = 1; i <= 100; i++) await symposium.database.query('INSERT OR REPLACE INTO items (id, name) VALUES (?, ?)', [i, 'item ' + i]);"
        "export default () => 'ok';"
    )
    assert setup_sql == "ok"

    from tests.test_canvas_performance import as_ops, pillow_floor, shapes

    items = shapes()
    ops_json = json.dumps(as_ops(items))

    def measure_paths(label, code, floors):
        results = {}
        settings.SYMPOSIUM_RQ_CAPABILITIES = []
        results["inline"] = block(code)
        if options.redis:
            settings.SYMPOSIUM_RQ_CAPABILITIES = [*capabilities, "email"]
            results["RQ"] = block(code)
            settings.SYMPOSIUM_RQ_CAPABILITIES = []
        for path, times in results.items():
            print(f"{label:<16} {path:<7} {percentiles(times)}")
        for name, times in floors.items():
            print(f"{label:<16} {'floor':<7} {percentiles(times)}   {name}")

    worker = None
    if options.redis:
        import django_rq

        django_rq.get_queue("capabilities").connection.flushdb()
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "capabilities", "--worker-class", "rq.SimpleWorker"],
            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
    try:
        print(f"Symposium capability benchmark: {n} calls per path, {options.exports} canvas exports")
        db_file = tenant.storage_root() / ".symposium" / "database.sqlite3"

        def per_call_connection():
            with sqlite3.connect(db_file) as connection:
                connection.execute("SELECT id, name FROM items WHERE id = ?", (42,)).fetchall()

        kept = sqlite3.connect(db_file)
        measure_paths("database.query", LOOP % {"n": n, "call": "symposium.database.query('SELECT id, name FROM items WHERE id = ?', [42])"}, {
            "sqlite3, connection per query": timed(per_call_connection, n),
            "sqlite3, kept connection": timed(lambda: kept.execute("SELECT id, name FROM items WHERE id = ?", (42,)).fetchall(), n),
        })

        import httpx

        # The handler opens a connection per request (to the address it checked), so the
        # comparable floor is a GET on a new connection.
        fresh = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        measure_paths("network.fetch", LOOP % {"n": n, "call": f"symposium.network.fetch('{url}')"},
                      {"httpx.Client, new connection per GET": timed(lambda: fresh.get(url).json(), n)})

        # The exports and their floor alternate, one of each at a time, so that the load
        # of a shared machine falls on both alike (measured one series after the other,
        # a burst of load made the ratio swing from 0.9 to 2.5 between runs).
        paths = {"inline": []}
        if options.redis:
            paths["RQ"] = []
        floor = []
        one_export = CANVAS % {"n": 1, "ops": ops_json}
        for _ in range(options.exports):
            for path, times in paths.items():
                settings.SYMPOSIUM_RQ_CAPABILITIES = ["files", "network", "canvas", "database", "process"] if path == "RQ" else []
                times += block(one_export)
            settings.SYMPOSIUM_RQ_CAPABILITIES = []
            floor += timed(lambda: pillow_floor(items), 1)
        for path, times in paths.items():
            ratio = statistics.median(times) / statistics.median(floor)
            print(f"{'canvas export':<16} {path:<7} {percentiles(times)}   {ratio:.2f}x the floor")
        print(f"{'canvas export':<16} {'floor':<7} {percentiles(floor)}   Pillow ImageDraw, same shapes, PNG")

        echo_floor = timed(lambda: subprocess.run(["echo", "hello"], capture_output=True), max(50, n // 10))
        measure_paths("process echo", LOOP % {"n": max(50, n // 10), "call": "symposium.process.execute('echo', ['hello'])"},
                      {"subprocess.run echo": echo_floor})
        # Forked by the spawner (the default) or by the server itself, ten calls of each
        # at a time, alternating, so that a shared machine's load falls on both alike.
        ten = LOOP % {"n": 10, "call": "symposium.process.execute('echo', ['hello'])"}
        forks = {True: [], False: []}
        for _ in range(max(5, n // 100)):
            for spawned, times in forks.items():
                settings.SYMPOSIUM_PROCESS_SPAWNER = spawned
                times += block(ten)
        settings.SYMPOSIUM_PROCESS_SPAWNER = True
        for spawned, times in forks.items():
            ratio = statistics.median(times) / statistics.median(echo_floor)
            how = "forked by the spawner" if spawned else "forked by the server"
            print(f"{'process echo':<16} {'inline':<7} {percentiles(times)}   {ratio:.2f}x the floor, {how}")

        new_capabilities(block, measure_paths, tenant, server, n, smtp_port)
    finally:
        relay.terminate()
        if worker is not None:
            worker.terminate()
            worker.wait(10)
        server.call(service.shutdown(), 60)
        http.close()
    sys.stdout.flush()
    os._exit(0)


def new_capabilities(block, measure_paths, tenant, server, n, smtp_port):
    """kv, email, image and realtime, each next to its floor."""
    import asyncio
    import io
    import smtplib
    from email.message import EmailMessage

    from channels.layers import get_channel_layer
    from django.db import connection
    from PIL import Image

    from capabilities.realtime.channels import group_name
    from tests.support.websocket import connect_local

    assert block("await symposium.kv.set('bench', { n: 1, tags: ['a', 'b'] }); export default () => 'ok';") == "ok"
    select = ("SELECT value, is_bytes, expires FROM capabilities_keyvalue WHERE tenant_id = %s AND key = %s "
              "AND (expires IS NULL OR expires > CURRENT_TIMESTAMP)")

    def direct_select():
        with connection.cursor() as cursor:
            cursor.execute(select, [tenant.pk, "bench"])
            cursor.fetchone()

    measure_paths("kv.get", LOOP % {"n": n, "call": "symposium.kv.get('bench')"},
                  {"SELECT on the platform database": timed(direct_select, n)})

    mails = max(50, n // 10)
    attachment = "x" * 1024
    send = ("symposium.email.send({ to: 'alice@example.org', subject: 'Bench', text: 'Hello from the benchmark.', "
            f"attachments: [{{ filename: 'a.txt', content: '{attachment}' }}] }})")

    def smtp_floor():
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "bench@bench.example", "alice@example.org", "Bench"
        message.set_content("Hello from the benchmark.")
        message.add_attachment(attachment, filename="a.txt")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as smtp:
            smtp.send_message(message)

    measure_paths("email.send", LOOP % {"n": mails, "call": send}, {"smtplib, new connection per message": timed(smtp_floor, mails)})

    source = tenant.storage_root() / "bench" / "photo.png"
    source.parent.mkdir(parents=True, exist_ok=True)
    gradient = Image.linear_gradient("L").resize((1920, 1080))
    Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)).save(source)
    raw = source.read_bytes()

    def pillow_floor():
        with Image.open(io.BytesIO(raw)) as picture:
            small = picture.resize((640, 360), Image.LANCZOS).convert("L")
            small.save(io.BytesIO(), format="PNG")

    transforms = max(20, n // 50)
    measure_paths("image.transform", LOOP % {"n": transforms, "call": "symposium.image.transform('bench/photo.png', "
                  "[{ type: 'resize', width: 640 }, 'grayscale'], { output: 'bench/small.png' })"},
                  {"Pillow, same resize and grayscale, PNG": timed(pillow_floor, transforms)})

    tenant.realtime_public_channels = "bench"
    tenant.save()

    async def listen():
        return await connect_local(server.port, "/ws/realtime/bench/bench", {})

    async def bare_group_sends(count):
        layer = get_channel_layer()
        event = {"type": "realtime.message", "channel": "bench", "message": {"n": 1}}
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            await layer.group_send(group_name(tenant.pk, "bench"), event)
            times.append((time.perf_counter() - t0) * 1000)
        return times

    async def drain(ws):
        while await ws.receive() is not None:
            pass

    ws = server.call(listen(), 30)
    reader = asyncio.run_coroutine_threadsafe(drain(ws), server.loop)
    try:
        floor = server.call(bare_group_sends(n), 600)
        measure_paths("realtime.publish", LOOP % {"n": n, "call": "symposium.realtime.publish('bench', { n: 1 })"},
                      {"bare channel-layer group_send": floor})
    finally:
        server.loop.call_soon_threadsafe(ws.abort)
        reader.cancel()


if __name__ == "__main__":
    main()
