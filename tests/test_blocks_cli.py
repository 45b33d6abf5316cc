"""The commands of saved blocks as a user runs them: separate processes with their own
platform (SQLite, no Redis), their output and exit status."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SAVE = """
from blocks.service import deploy, save_block
from tenants.models import Tenant
acme = Tenant.objects.get(slug="acme")
block, _, _ = save_block(acme, "hello", code="export default (i) => ({ v: 1, name: i?.name });")
deploy(block, 1)
save_block(acme, "hello", code="export default (i) => ({ v: 2, name: i?.name });")
save_block(acme, "typed", code="export default (i: { n: number }): number => i.n * 2;", language="typescript")
deploy(save_block(acme, "typed", code="export default (i: { n: number }): number => i.n * 2;")[0], 1)
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    var = tmp_path_factory.mktemp("var")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env["SYMPOSIUM_VAR_DIR"] = str(var)

    def manage(*args, timeout=120):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    assert manage("migrate", "-v0").returncode == 0
    assert manage("createtenant", "acme", "--profile", "Interactive").returncode == 0
    saved = manage("shell", "-c", SAVE)
    assert saved.returncode == 0, saved.stderr
    return manage


def test_runblock_runs_the_deployed_version_or_the_one_named(platform):
    deployed = platform("runblock", "--block", "hello", "--tenant", "acme", "--input", '{"name": "Ada"}', "--json")
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["result"] == {"v": 1, "name": "Ada"}
    named = platform("runblock", "--block", "hello@2", "--tenant", "acme", "--json")
    assert json.loads(named.stdout)["result"] == {"v": 2}


def test_runblock_runs_a_typescript_block(platform):
    result = platform("runblock", "--block", "typed", "--tenant", "acme", "--input", '{"n": 21}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_runblock_says_what_is_missing(platform):
    missing = platform("runblock", "--block", "nothing", "--tenant", "acme")
    assert missing.returncode == 2 and "no block 'nothing'" in missing.stderr
    no_version = platform("runblock", "--block", "hello@9", "--tenant", "acme")
    assert no_version.returncode == 2 and "no version 9" in no_version.stderr
    both = platform("runblock", "x.js", "--block", "hello", "--tenant", "acme")
    assert both.returncode == 2


def test_createtoken_prints_the_token_alone(platform):
    result = platform("createtoken", "acme", "--scope", "run", "--name", "app")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sym_") and len(result.stdout.strip().splitlines()) == 1
    assert platform("createtoken", "nobody", "--scope", "run").returncode != 0
