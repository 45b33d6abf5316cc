"""Running blocks from tests through the real run service, broker and isolates."""

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def server():
    from isolates.server import local_server

    return local_server()


class Runner:
    """Runs blocks through the server's run service and collects the run's events."""

    def __init__(self, server):
        self.server = server

    def __call__(self, tenant, code, input=None, timeout=60, name="test.js"):
        return self.server.call(self._run(tenant, code, input, name), timeout)

    def start(self, tenant, code):
        from isolates.runs import service_for_port

        async def start():
            return await service_for_port(self.server.port).start(tenant, code, name="test.js")

        return self.server.call(start(), 30)

    def stop(self, run_id):
        async def stop():
            return await self._service().stop(run_id)

        return self.server.call(stop(), 30)

    def wait(self, run_id):
        async def wait():
            return await self._service().wait(run_id)

        return self.server.call(wait(), 60)

    def _service(self):
        """The run service; call it on the server's loop."""
        from isolates.runs import service_for_port

        return service_for_port(self.server.port)

    def service(self):
        async def get():
            return self._service()

        return self.server.call(get(), 10)

    def stop_all(self):
        async def stop_all():
            await self._service().stop_all()

        self.server.call(stop_all(), 30)

    async def _run(self, tenant, code, input, name="test.js"):
        import asyncio

        from channels.layers import get_channel_layer

        from isolates.runevents import run_group
        from isolates.runs import service_for_port

        service = service_for_port(self.server.port)
        layer = get_channel_layer()
        channel = await layer.new_channel()
        run = await service.start(tenant, code, name=name, input=input)
        await layer.group_add(run_group(run.id), channel)
        events = []

        async def collect():
            while True:
                message = await layer.receive(channel)
                events.append(message)
                if message.get("event") == "finished":
                    return

        collector = asyncio.ensure_future(collect())
        finished = await service.wait(run.id)
        try:
            await asyncio.wait_for(collector, 5)
        except asyncio.TimeoutError:
            collector.cancel()
        await layer.group_discard(run_group(run.id), channel)
        finished.events = events
        finished.logs = [e["text"] for e in events if e.get("event") == "log"]
        return finished


@pytest.fixture
def run_block(server):
    runner = Runner(server)
    yield runner
    # No run outlives its test (its supervisor would write to the next test's database).
    runner.stop_all()


@pytest.fixture
def seeded(make_tenant):
    def make(slug, profile):
        tenant = make_tenant(slug, profile)
        shutil.copytree(EXAMPLES / "storage", tenant.storage_root(), dirs_exist_ok=True)
        return tenant

    return make




@pytest.fixture
def rq_dispatch(settings):
    """Every capability through RQ, with a real worker (in a thread of this process)."""
    if not settings.REDIS_URL:
        pytest.skip("the RQ path needs REDIS_URL (the suite's second run)")
    import django_rq

    from tests.rq_fixtures import RunningWorker

    queue = django_rq.get_queue("capabilities")
    queue.connection.flushdb()
    settings.SYMPOSIUM_RQ_CAPABILITIES = ["files", "network", "canvas", "database", "process", "kv", "email", "image", "realtime"]
    worker = RunningWorker(queue)
    yield queue
    worker.stop()
    assert queue.failed_job_registry.count == 0
    queue.connection.flushdb()


@pytest.fixture(params=["inline", "rq"])
def dispatch_path(request, settings):
    """Run the test on both paths: inline (always) and RQ (when Redis is configured)."""
    if request.param == "inline":
        settings.SYMPOSIUM_RQ_CAPABILITIES = []
        return "inline"
    request.getfixturevalue("rq_dispatch")
    return "rq"
