"""The effective policy of a tenant and the decision on each call, for every profile."""

import pytest

from capabilities.registry import OPERATIONS
from tenants.models import PolicyOverride
from tenants.policy import DECIDERS, decide, effective_policy

MB = 1024 * 1024

# (operation, args) -> which profiles allow it. The seed's table, call by call.
CASES = [
    ("readFile", {"path": "data/config.json"}, {"Basic", "Interactive", "Data", "Advanced"}),
    ("fileExists", {"path": "x"}, {"Basic", "Interactive", "Data", "Advanced"}),
    ("listDirectory", {"path": "uploads"}, {"Basic", "Interactive", "Data", "Advanced"}),
    ("getFileInfo", {"path": "x"}, {"Basic", "Interactive", "Data", "Advanced"}),
    ("writeFile", {"path": "out.txt", "data": "hi"}, {"Interactive", "Data", "Advanced"}),
    ("deleteFile", {"path": "out.txt"}, {"Interactive", "Data", "Advanced"}),
    ("writeFile", {"path": "big.dat", "data": b"x" * (6 * MB)}, {"Data", "Advanced"}),
    ("writeFile", {"path": "run.sh", "data": "echo"}, {"Advanced"}),
    ("network.fetch", {"url": "https://cdn.jsdelivr.net/npm/x"}, {"Basic", "Interactive", "Data", "Advanced"}),
    ("network.fetch", {"url": "https://api.example.com/data"}, {"Interactive", "Data", "Advanced"}),
    ("network.sendWebhook", {"url": "https://webhook.site/xyz", "payload": {}}, {"Interactive", "Data", "Advanced"}),
    ("canvas.createCanvas", {"width": 800, "height": 600}, {"Interactive", "Data", "Advanced"}),
    ("canvas.createCanvas", {"width": 3840, "height": 2160}, {"Data", "Advanced"}),
    ("canvas.createCanvas", {"width": 7680, "height": 4320}, {"Advanced"}),
    ("canvas.draw", {"canvasId": "c", "ops": []}, {"Interactive", "Data", "Advanced"}),
    ("canvas.exportImage", {"canvasId": "c", "format": "png"}, {"Interactive", "Data", "Advanced"}),
    ("canvas.exportImage", {"canvasId": "c", "format": "webp"}, {"Data", "Advanced"}),
    ("canvas.exportImage", {"canvasId": "c", "format": "tiff"}, {"Advanced"}),
    ("database.query", {"sql": "SELECT 1", "params": []}, {"Data", "Advanced"}),
    ("database.transaction", {"steps": []}, {"Data", "Advanced"}),
    ("process.execute", {"command": "ls", "args": ["-la"]}, {"Advanced"}),
    ("kv.get", {"key": "k"}, {"Interactive", "Data", "Advanced"}),
    ("kv.set", {"key": "k", "value": 1}, {"Interactive", "Data", "Advanced"}),
    ("kv.delete", {"key": "k"}, {"Interactive", "Data", "Advanced"}),
    ("kv.list", {}, {"Interactive", "Data", "Advanced"}),
    ("email.send", {"to": "a@example.org", "subject": "s", "text": "t"}, {"Interactive", "Data", "Advanced"}),
    ("image.info", {"path": "a.png"}, {"Interactive", "Data", "Advanced"}),
    ("image.transform", {"path": "a.png", "steps": [], "output": "b.png"}, {"Interactive", "Data", "Advanced"}),
    ("realtime.publish", {"channel": "c", "message": 1}, {"Interactive", "Data", "Advanced"}),
]


@pytest.mark.parametrize("profile", ["Basic", "Interactive", "Data", "Advanced"])
@pytest.mark.parametrize("op,args,allowed_for", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_it_decides_each_call_for_each_profile(make_tenant, profile, op, args, allowed_for):
    policy = effective_policy(make_tenant("t", profile))
    decision = decide(policy, OPERATIONS[op], args)
    assert decision.allowed == (profile in allowed_for), decision
    if not decision.allowed:
        assert decision.code in ("PERMISSION_DENIED", "QUOTA_EXCEEDED")
        assert decision.message


def test_every_operation_is_covered_by_the_table():
    assert {op for op, _, _ in CASES} == set(OPERATIONS)


def test_every_capability_of_the_registry_has_a_policy():
    assert {op.capability for op in OPERATIONS.values()} == set(DECIDERS)


def test_it_applies_the_seed_numbers(profiles):
    expect = {
        "Basic": dict(network_rate_per_minute=10, files_access="read", network_access="cdn", database_access="none", process_allowed=False),
        "Interactive": dict(max_file_size=5 * MB, network_rate_per_minute=30, canvas_max_width=1920, canvas_max_height=1080, memory_mb=128, time_limit_seconds=60),
        "Data": dict(max_file_size=50 * MB, network_rate_per_minute=60, canvas_max_width=3840, canvas_max_height=2160, database_access="full", database_rate_per_minute=100, memory_mb=256, time_limit_seconds=300),
        "Advanced": dict(max_file_size=500 * MB, network_rate_per_minute=200, canvas_max_width=7680, canvas_max_height=4320, process_allowed=True, memory_mb=512, time_limit_seconds=600, files_access="all"),
    }
    for name, values in expect.items():
        for field, value in values.items():
            assert getattr(profiles[name], field) == value, (name, field)
    assert profiles["Interactive"].canvas_formats == "png"
    assert set(profiles["Advanced"].canvas_formats.split()) == {"png", "jpeg", "webp", "gif", "bmp", "tiff"}


def test_it_applies_overrides(make_tenant):
    tenant = make_tenant("t", "Interactive")
    PolicyOverride.objects.create(tenant=tenant, setting="max_file_size", value=str(20 * MB))
    PolicyOverride.objects.create(tenant=tenant, setting="database_access", value="full")
    PolicyOverride.objects.create(tenant=tenant, setting="canvas_formats", value="png webp")
    policy = effective_policy(tenant)
    assert policy.max_file_size == 20 * MB
    assert policy.overridden == {"max_file_size", "database_access", "canvas_formats"}
    assert decide(policy, OPERATIONS["writeFile"], {"path": "a.dat", "data": b"x" * (6 * MB)}).allowed
    assert decide(policy, OPERATIONS["database.query"], {"sql": "SELECT 1"}).allowed
    assert decide(policy, OPERATIONS["canvas.exportImage"], {"canvasId": "c", "format": "webp"}).allowed
    # The profile itself is untouched.
    assert tenant.profile.max_file_size == 5 * MB


def test_it_refuses_every_call_of_a_suspended_tenant(make_tenant):
    policy = effective_policy(make_tenant("t", "Advanced"))
    decision = decide(policy, OPERATIONS["readFile"], {"path": "a"}, tenant_active=False)
    assert (decision.allowed, decision.code) == (False, "PERMISSION_DENIED")
    assert "suspended" in decision.message


def test_it_refuses_odd_arguments(make_tenant):
    policy = effective_policy(make_tenant("t", "Advanced"))
    assert decide(policy, OPERATIONS["readFile"], ["not", "a", "dict"]).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["network.fetch"], {"url": "file:///etc/passwd"}).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["network.fetch"], {"url": "ftp://example.com/"}).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["canvas.createCanvas"], {"width": float("nan"), "height": 10}).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["canvas.createCanvas"], {"width": 0, "height": 10}).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["canvas.createCanvas"], {"width": 100000, "height": 100000}).code == "QUOTA_EXCEEDED"
    assert decide(policy, OPERATIONS["canvas.exportImage"], {"canvasId": "c", "format": "svg"}).code == "INVALID_ARGUMENT"
    assert decide(policy, OPERATIONS["process.execute"], {"command": "sh"}).code == "PERMISSION_DENIED"
    assert decide(policy, OPERATIONS["process.execute"], {"command": "/bin/ls"}).code == "PERMISSION_DENIED"


def test_cdn_only_tenants_match_exact_hosts_not_lookalikes(make_tenant):
    policy = effective_policy(make_tenant("t", "Basic"))
    assert decide(policy, OPERATIONS["network.fetch"], {"url": "https://unpkg.com/react"}).allowed
    for url in ["https://unpkg.com.evil.example/", "https://evilunpkg.com/", "https://unpkg.com@evil.example/"]:
        assert not decide(policy, OPERATIONS["network.fetch"], {"url": url}).allowed, url
