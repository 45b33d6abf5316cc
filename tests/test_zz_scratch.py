import pytest
from pathlib import Path
from tests.test_floods import broker, pool  # noqa
from tests.support.stub_broker import run_block

async def test_wasm(pool, broker):
    code = Path("/tmp/wasm.js").read_text()
    for i in range(8):
        run_, done, exit = await run_block(pool, broker, code, memory_mb=128, wall_seconds=40)
        print(exit.returncode, exit.reason)
        if exit.returncode == 1:
            print(exit.stderr[-3000:])
            break
