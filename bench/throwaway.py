"""A throwaway platform for the benchmarks: its own SQLite database and storage folder
(never the project's own), Redis only when asked for, and one Advanced tenant "bench"."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def throwaway_platform(redis_url="", allow_hosts=(), overrides=None):
    """Set Django up on a fresh database and return the bench tenant. Calls go inline
    until a benchmark routes capabilities to RQ itself (SYMPOSIUM_RQ_CAPABILITIES)."""
    os.environ["SYMPOSIUM_VAR_DIR"] = tempfile.mkdtemp(prefix="symposium-bench-")
    os.environ.pop("DATABASE_URL", None)
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    else:
        os.environ.pop("REDIS_URL", None)
    os.environ["SYMPOSIUM_RQ_CAPABILITIES"] = ""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "symposium.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    hosts = [arg for host in allow_hosts for arg in ("--allow-host", host)]
    call_command("createtenant", "bench", "--profile", "Advanced", *hosts, stdout=open(os.devnull, "w"))
    from tenants.models import PolicyOverride, Tenant

    tenant = Tenant.objects.get(slug="bench")
    for setting, value in (overrides or {}).items():
        PolicyOverride.objects.create(tenant=tenant, setting=setting, value=str(value))
    return tenant
