"""Settings from the environment: embedded defaults, production mode."""

import os
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
