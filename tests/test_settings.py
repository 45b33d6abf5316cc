"""Settings from the environment: embedded defaults, production mode."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env=None, tmp_path=None):
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SYMPOSIUM_MODE", "DJANGO_SETTINGS_MODULE")}
    base["SYMPOSIUM_VAR_DIR"] = str(tmp_path)
    base.update(env or {})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)


def test_production_mode_passes_check_deploy(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path,
                    env={"SYMPOSIUM_MODE": "production", "SECRET_KEY": "x" * 40 + "-production-key-from-the-environment",
                         "ALLOWED_HOSTS": "symposium.example.org"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_mode_requires_a_secret_key(tmp_path):
    result = manage("check", tmp_path=tmp_path, env={"SYMPOSIUM_MODE": "production"})
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) is required in production mode" in result.stderr


def test_development_mode_generates_a_secret_key_once(tmp_path):
    assert manage("check", tmp_path=tmp_path).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) > 50
    assert manage("check", tmp_path=tmp_path).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"


def test_a_bad_boolean_is_refused_loudly(tmp_path):
    result = manage("check", tmp_path=tmp_path, env={"DEBUG": "maybe"})
    assert "DEBUG must be true or false, not 'maybe'" in result.stderr


# -- every setting is documented ------------------------------------------------------

ENV_HELPERS = {"envbool", "envint", "envfloat", "envsecret"}


def _is_os_environ(node):
    return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"


def _literal(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def environment_reads():
    """The variables settings.py reads: os.environ.get / os.environ[...] and the env*
    helpers (envsecret also reads NAME_FILE). Reads whose name is not a literal may only
    happen inside the helpers themselves, which take the name as their argument."""
    tree = ast.parse((ROOT / "symposium" / "settings.py").read_text())
    helpers = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in ENV_HELPERS]
    inside_helpers = {id(inner) for helper in helpers for inner in ast.walk(helper)}
    names, unnamed = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and _is_os_environ(node.func.value):
            name_node = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            name_node = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ENV_HELPERS:
            name_node = node.args[0]
            if node.func.id == "envsecret" and _literal(name_node):
                names.add(f"{_literal(name_node)}_FILE")
        else:
            continue
        if _literal(name_node):
            names.add(_literal(name_node))
        elif id(node) not in inside_helpers:
            unnamed.append(ast.unparse(node))
    return names, unnamed


def readme_configuration_table():
    """The variable names in the first column of the README's Configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def test_every_environment_variable_settings_reads_is_in_the_readme_table():
    read, unnamed = environment_reads()
    assert not unnamed, f"settings.py reads the environment without naming the variable: {unnamed}"
    assert len(read) > 25  # the parser found the reads, not only a few of them
    documented = readme_configuration_table()
    assert read - documented == set(), "read by settings.py but missing from the README's Configuration table"
    assert documented - read == set(), "in the README's Configuration table but not read by settings.py"
