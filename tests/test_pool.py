"""The isolate pool: warm isolates, cold starts, exit records, and cleaning up after itself
(and after a server that died)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from isolates.pool import IsolatePool, IsolateStartError
from tests.support.stub_broker import StubBroker, run_block

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def broker():
    async with StubBroker() as broker:
        yield broker


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_it_hands_out_a_warm_isolate_and_warms_another(broker):
    async with IsolatePool(broker.port, warm_size=1, warm_limits=[(64, 10)]) as pool:
        await pool.fill()
        warm_pid = pool._warm[(64, 10)][0].pid
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        assert isolate.pid == warm_pid and isolate.ready_at is not None
        # The pool refills in the background, without being asked.
        await wait_until(lambda: pool.warm_count(64, 10) == 1)
        assert pool._warm[(64, 10)][0].pid != warm_pid
        run = broker.add_run("export default () => 'warm'")
        await isolate.assign(broker.url, run.token)
        assert (await run.finished())["result"] == "warm"


async def test_it_starts_a_cold_isolate_when_none_is_warm(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        started = time.monotonic()
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        assert isolate.alive and isolate.ready_at - isolate.spawned_at < 5
        assert time.monotonic() - started < 5
        run, done, exit = await run_block(pool, broker, "export default () => 'cold'")
        assert done["result"] == "cold"


def main_js_role(pid):
    """What the pool told an isolate's runtime it is (its last argument)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-1].decode()


TYPESCRIPT = "const twice = (n: number): number => n * 2; export default (): number => twice(21);"


async def test_it_prepares_typescript_on_warm_spares_only_and_both_run_it(broker):
    # A warm spare starts TypeScript's transpiler before it is ready (it waits in the pool
    # anyway); an isolate started for a waiting run does not (it would cost the run about
    # 150 ms): both run TypeScript blocks.
    async with IsolatePool(broker.port, warm_size=1, warm_limits=[(64, 10)]) as pool:
        await pool.fill()
        spare = await pool.acquire(memory_mb=64, cpu_seconds=10)
        assert main_js_role(spare.pid) == "spare"
        run = broker.add_run(TYPESCRIPT, name="spare.ts")
        await spare.assign(broker.url, run.token)
        assert (await run.finished())["result"] == 42
    async with IsolatePool(broker.port, warm_size=0) as pool:
        cold = await pool.acquire(memory_mb=64, cpu_seconds=10)
        assert main_js_role(cold.pid) == "for-run"
        run = broker.add_run(TYPESCRIPT, name="cold.ts")
        await cold.assign(broker.url, run.token)
        assert (await run.finished())["result"] == 42


async def test_it_keeps_warm_isolates_per_memory_and_cpu_limits(broker):
    async with IsolatePool(broker.port, warm_size=1, warm_limits=[(64, 10), (128, 60)]) as pool:
        await pool.fill()
        assert pool.warm_count(64, 10) == 1 and pool.warm_count(128, 60) == 1
        small = pool._warm[(64, 10)][0]
        big = await pool.acquire(memory_mb=128, cpu_seconds=60)
        assert big is not small
        with open(f"/proc/{big.pid}/cmdline", "rb") as f:
            assert b"--max-old-space-size=128" in f.read()
        with open(f"/proc/{big.pid}/limits") as f:
            assert "Max cpu time              61                   62" in f.read()


async def test_cant_outrank_the_server_for_the_cpu(broker):
    """Every thread of an isolate (Deno's, V8's, the block's worker) runs at a nice value
    10 above the server's: a busy block cannot take the cores from the server."""
    from isolates.sandbox import POLICY

    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + POLICY["nice"])
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        run = broker.add_run("export default () => { const end = Date.now() + 300; while (Date.now() < end); return 1; }")
        await isolate.assign(broker.url, run.token)
        await asyncio.sleep(0.1)
        tasks = os.listdir(f"/proc/{isolate.pid}/task")
        nice = set()
        for task in tasks:
            with open(f"/proc/{isolate.pid}/task/{task}/stat") as f:
                nice.add(int(f.read().rsplit(")", 1)[1].split()[16]))
        assert len(tasks) > 2 and nice == {expected}, (tasks, nice)
        assert (await run.finished())["result"] == 1


async def test_it_gives_each_isolate_a_user_of_its_own(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        first = await pool.acquire(memory_mb=64, cpu_seconds=10)
        second = await pool.acquire(memory_mb=64, cpu_seconds=10)
        uids = [os.stat(f"/proc/{isolate.pid}").st_uid for isolate in (first, second)]
        assert uids[0] != uids[1] and 0 not in uids


async def test_it_keeps_concurrent_runs_apart(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        code = "export default async () => { await new Promise((r) => setTimeout(r, 50)); return process.env.NAME; }"
        results = await asyncio.gather(*(run_block(pool, broker, code, env={"NAME": name}) for name in ("acme", "globex", "initech")))
        assert [done["result"] for _, done, _ in results] == ["acme", "globex", "initech"]


async def test_it_reports_peak_memory_and_cpu_time(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        code = """
        const big = new Uint8Array(80 * 1024 * 1024).fill(7);
        let x = 0; const until = Date.now() + 300; while (Date.now() < until) x++;
        export default () => big.length;
        """
        _, done, exit = await run_block(pool, broker, code, memory_mb=128)
        assert done["result"] == 80 * 1024 * 1024
        assert exit.peak_rss_bytes > 80 * 1024 * 1024
        # It spins for 300 ms of wall time; on a busy machine it gets less of the CPU.
        assert exit.cpu_seconds >= 0.1


async def test_it_measures_an_idle_isolate(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        rss, pss = isolate.rss(), isolate.pss()
        # A Deno process with one idle Worker: tens of MB, most of it shared pages.
        assert 10 * 2**20 < pss <= rss < 200 * 2**20


async def test_it_refuses_a_second_assignment(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        run, done, _ = await run_block(pool, broker, "export default () => 1")
        with pytest.raises(RuntimeError, match="exactly one block"):
            await run.isolate.assign(broker.url, run.token)


async def test_it_kills_the_isolates_process_group_and_reaps_it(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        run = broker.add_run("while (true) {}")
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        await isolate.assign(broker.url, run.token)
        await wait_until(lambda: run.started_at is not None)
        exit = await isolate.terminate()
        assert exit.killed and exit.signal == signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.killpg(isolate.pid, 0)
        assert not os.path.exists(f"/proc/{isolate.pid}")


async def test_it_kills_everything_it_started_on_shutdown(broker):
    pool = IsolatePool(broker.port, warm_size=2, warm_limits=[(64, 10)])
    await pool.fill()
    run = broker.add_run("await new Promise(() => {})")
    running = await pool.acquire(memory_mb=64, cpu_seconds=10)
    await running.assign(broker.url, run.token)
    await wait_until(lambda: run.started_at is not None)
    pids = [running.pid] + [isolate.pid for isolate in pool._warm[(64, 10)]]
    await pool.shutdown()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.acquire(memory_mb=64, cpu_seconds=10)


async def test_it_lets_a_warm_isolate_go_when_the_server_stops_talking(broker):
    # A warm isolate whose server died sees its stdin close, and leaves.
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        isolate.process.stdin.close()
        exit = await asyncio.wait_for(isolate.wait(), 5)
        assert exit.returncode == 10 and exit.reason == "released before it was assigned a run"


def test_isolates_die_with_the_server_that_started_them(tmp_path):
    # A server process with a warm isolate and a running one is killed outright (no
    # shutdown, no cleanup code): the kernel takes both isolates with it.
    server = textwrap.dedent(
        f"""
        import asyncio, json, os, sys
        sys.path.insert(0, {str(PROJECT)!r})
        from isolates.pool import IsolatePool
        from tests.support.stub_broker import StubBroker

        async def main():
            broker = await StubBroker().start()
            pool = IsolatePool(broker.port, warm_size=1, warm_limits=[(64, 10)])
            await pool.fill()
            run = broker.add_run("await new Promise(() => {{}})", operations={{}})
            running = await pool.acquire(memory_mb=64, cpu_seconds=10)
            await running.assign(broker.url, run.token)
            while run.started_at is None:
                await asyncio.sleep(0.01)
            await pool.fill()
            print(json.dumps([running.pid] + [i.pid for i in pool._warm[(64, 10)]]), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    process = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE)
    try:
        pids = json.loads(process.stdout.readline())
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in pids)
    finally:
        process.kill()


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def socket_inodes(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


async def test_isolates_are_forked_by_a_small_spawner_of_the_pools_own(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        helper = pool._spawner.process.pid
        # The spawner is this process's child, the isolate the spawner's: a fork of a
        # process of a few MB that has the launcher loaded, not a new Python each time.
        assert parent_of(helper) == os.getpid() and parent_of(isolate.pid) == helper
        assert Path(f"/proc/{isolate.pid}/comm").read_text().strip() == "deno"
        status = Path(f"/proc/{helper}/status").read_text()
        assert int(status.split("VmRSS:")[1].split()[0]) < 40 * 1024
        run = broker.add_run("export default () => 'forked'")
        await isolate.assign(broker.url, run.token)
        assert (await run.finished())["result"] == "forked"
    # The pool's shutdown ends its spawner.
    await wait_until(lambda: not alive(helper), 5)


async def test_cant_reach_the_pools_spawner_or_the_server_from_an_isolate(broker):
    # An isolate holds no descriptor of the spawner's (its control socket, another
    # isolate's channel) or of the server's: a block that got code execution in Deno
    # could not ask the spawner for a process of its choosing.
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolates = [await pool.acquire(memory_mb=64, cpu_seconds=10) for _ in range(2)]
        helper = pool._spawner.process.pid
        for isolate in isolates:
            theirs = socket_inodes(isolate.pid)
            assert not theirs & socket_inodes(helper)
            assert not theirs & socket_inodes(os.getpid())
            # Its descriptors 0-2 are the pool's pipes; nothing else it holds was given.
            for fd in ("0", "1", "2"):
                assert os.readlink(f"/proc/{isolate.pid}/fd/{fd}").startswith("pipe:[")


async def test_a_pools_isolates_die_with_its_spawner_and_the_next_gets_a_new_one(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        isolate = await pool.acquire(memory_mb=64, cpu_seconds=10)
        first = pool._spawner.process.pid
        os.kill(first, signal.SIGKILL)
        exit = await asyncio.wait_for(isolate.wait(), 5)
        assert exit.returncode == -signal.SIGKILL
        await wait_until(lambda: not alive(isolate.pid), 5)
        _, done, _ = await run_block(pool, broker, "export default () => 'again'")
        assert done["result"] == "again" and pool._spawner.process.pid != first


def test_it_works_from_a_management_command_style_event_loop():
    # `runblock` runs its own loop with asyncio.run; a pool made there works there.
    async def main():
        async with StubBroker() as broker, IsolatePool(broker.port, warm_size=0) as pool:
            _, done, _ = await run_block(pool, broker, "export default () => 'from asyncio.run'")
            return done["result"]

    assert asyncio.run(main()) == "from asyncio.run"


def test_it_belongs_to_the_event_loop_that_first_used_it():
    pool = IsolatePool(9, warm_size=0)

    async def bind():
        await pool.start()

    asyncio.run(bind())
    with pytest.raises(RuntimeError, match="belongs to the event loop"):
        asyncio.run(bind())


async def test_it_says_why_an_isolate_did_not_start(broker):
    async with IsolatePool(broker.port, warm_size=0, deno_path="/bin/false") as pool:
        with pytest.raises(IsolateStartError, match="did not start"):
            await pool.acquire(memory_mb=64, cpu_seconds=10)


async def test_it_validates_the_limits_it_is_asked_for(broker):
    async with IsolatePool(broker.port, warm_size=0) as pool:
        with pytest.raises(ValueError):
            await pool.acquire(memory_mb=1, cpu_seconds=10)
        with pytest.raises(ValueError):
            await pool.acquire(memory_mb=64, cpu_seconds=0)


async def test_it_logs_once_what_the_kernel_lacks(broker, tmp_path, caplog):
    # The launcher reports missing kernel features on stderr ("symposium-sandbox: ...");
    # the pool puts each distinct line in the server's log once. A wrapper stands in for a
    # kernel without Landlock by printing such a line before the real launcher runs.
    wrapper = tmp_path / "launcher.py"
    wrapper.write_text(
        "import importlib.util, os\n"
        f"spec = importlib.util.spec_from_file_location('real_launcher', {str(PROJECT / 'isolates' / 'sandbox.py')!r})\n"
        "real = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(real)\n"
        "def main(argv):\n"
        "    os.write(2, b'symposium-sandbox: Landlock is not available on this kernel\\n')\n"
        "    real.main(argv)\n"
    )
    async with IsolatePool(broker.port, warm_size=0, launcher=wrapper) as pool:
        with caplog.at_level("WARNING", logger="isolates.pool"):
            for _ in range(2):
                _, done, _ = await run_block(pool, broker, "export default () => 'still runs'")
                assert done["result"] == "still runs"
    assert [r.getMessage() for r in caplog.records] == ["symposium-sandbox: Landlock is not available on this kernel"]

