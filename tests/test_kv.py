"""The key-value capability: handlers called as the broker calls them, and blocks in real
isolates keeping state between runs. On SQLite in the embedded run of the suite and on
PostgreSQL in its second run."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from capabilities import kv
from capabilities.kv import limits
from capabilities.kv.handlers import purge_expired
from capabilities.kv.models import KeyValue
from capabilities.registry import OPERATIONS
from tenants.models import PolicyOverride
from tenants.policy import decide, effective_policy
from tests.helpers import call, override, refused

pytestmark = [pytest.mark.django_db(transaction=True)]





@pytest.fixture
def globex(make_tenant):
    return make_tenant("globex", "Interactive")


# -- behaviour ------------------------------------------------------------------------


def test_it_stores_json_values_and_reads_them_back(acme):
    call(kv.kv_set, acme, key="settings", value={"theme": "dark", "sizes": [1, 2.5], "on": True, "none": None})
    got = call(kv.kv_get, acme, key="settings")
    assert got["found"] is True
    assert got["data"] == {"theme": "dark", "sizes": [1, 2.5], "on": True, "none": None}
    call(kv.kv_set, acme, key="settings", value="replaced")
    assert call(kv.kv_get, acme, key="settings")["data"] == "replaced"
    assert KeyValue.objects.filter(tenant=acme).count() == 1


def test_it_stores_bytes_as_bytes(acme):
    call(kv.kv_set, acme, key="blob", value=bytes([0, 1, 254, 255]))
    assert call(kv.kv_get, acme, key="blob")["data"] == bytes([0, 1, 254, 255])


def test_it_says_when_a_key_is_missing(acme):
    assert call(kv.kv_get, acme, key="never-set") == {"data": None, "found": False}
    call(kv.kv_set, acme, key="null", value=None)
    assert call(kv.kv_get, acme, key="null")["found"] is True


def test_it_deletes_keys(acme):
    call(kv.kv_set, acme, key="k", value=1)
    assert call(kv.kv_delete, acme, key="k")["data"] == {"deleted": True}
    assert call(kv.kv_delete, acme, key="k")["data"] == {"deleted": False}
    assert call(kv.kv_get, acme, key="k")["found"] is False


def test_ttl_expires_keys_and_expired_keys_are_purged(acme):
    call(kv.kv_set, acme, key="short", value="soon gone", ttl=0.3)
    call(kv.kv_set, acme, key="long", value="stays", ttl=3600)
    assert call(kv.kv_get, acme, key="short")["data"] == "soon gone"
    assert call(kv.kv_get, acme, key="long")["expires"].endswith("Z")
    time.sleep(0.5)
    assert call(kv.kv_get, acme, key="short")["found"] is False
    assert [k["key"] for k in call(kv.kv_list, acme)["data"]["keys"]] == ["long"]
    # The row is still there until a write of the tenant (or purgekv) removes it.
    assert KeyValue.objects.filter(tenant=acme, key="short").exists()
    call(kv.kv_set, acme, key="other", value=1)
    assert not KeyValue.objects.filter(tenant=acme, key="short").exists()


def test_purge_removes_every_tenants_expired_rows(acme, globex):
    for tenant in (acme, globex):
        call(kv.kv_set, tenant, key="gone", value=1, ttl=60)
    KeyValue.objects.update(expires=timezone.now() - timedelta(seconds=1))
    assert purge_expired() == 2
    assert not KeyValue.objects.exists()


def test_it_lists_keys_by_prefix_page_by_page(acme):
    for name in ["user:1", "user:2", "user:3", "User:4", "session:1", "user_5"]:
        call(kv.kv_set, acme, key=name, value=name)
    first = call(kv.kv_list, acme, prefix="user:", limit=2)["data"]
    assert [k["key"] for k in first["keys"]] == ["user:1", "user:2"]
    assert first["cursor"]
    second = call(kv.kv_list, acme, prefix="user:", limit=2, cursor=first["cursor"])["data"]
    # The prefix is case-sensitive, on SQLite too (whose LIKE is not).
    assert [k["key"] for k in second["keys"]] == ["user:3"]
    assert second["cursor"] is None
    everything = call(kv.kv_list, acme)["data"]["keys"]
    assert len(everything) == 6 and everything[0]["size"] == len("User:4") + len('"User:4"')


def test_a_tenants_override_raises_its_quota(acme):
    override(acme, "kv_max_keys", 2)
    call(kv.kv_set, acme, key="a", value=1)
    call(kv.kv_set, acme, key="b", value=1)
    PolicyOverride.objects.filter(tenant=acme).update(value="3")
    call(kv.kv_set, acme, key="c", value=1)


# -- containment ----------------------------------------------------------------------


def test_cant_see_another_tenants_keys(acme, globex):
    call(kv.kv_set, globex, key="secret", value="globex's")
    assert call(kv.kv_get, acme, key="secret")["found"] is False
    assert call(kv.kv_list, acme)["data"]["keys"] == []
    assert call(kv.kv_delete, acme, key="secret")["data"] == {"deleted": False}
    call(kv.kv_set, acme, key="secret", value="acme's")
    assert call(kv.kv_get, globex, key="secret")["data"] == "globex's"
    assert call(kv.kv_get, acme, key="secret")["data"] == "acme's"


def test_cant_store_more_keys_than_the_quota(acme):
    override(acme, "kv_max_keys", 2)
    call(kv.kv_set, acme, key="a", value=1)
    call(kv.kv_set, acme, key="b", value=1)
    error = refused(kv.kv_set, acme, key="c", value=1)
    assert error.code == "QUOTA_EXCEEDED" and "2 keys, its limit" in error.message
    call(kv.kv_set, acme, key="a", value="replacing an existing key is fine")
    call(kv.kv_delete, acme, key="b")
    call(kv.kv_set, acme, key="c", value=1)


def test_cant_store_more_bytes_than_the_quota(acme):
    override(acme, "kv_max_bytes", 100)
    call(kv.kv_set, acme, key="a", value="x" * 60)
    error = refused(kv.kv_set, acme, key="b", value="y" * 60)
    assert error.code == "QUOTA_EXCEEDED" and "the quota is 100 bytes" in error.message
    assert not KeyValue.objects.filter(key="b").exists()
    call(kv.kv_set, acme, key="a", value="shorter")
    call(kv.kv_set, acme, key="b", value="y" * 60)


def test_cant_count_expired_keys_against_the_quota_forever(acme):
    override(acme, "kv_max_keys", 1)
    call(kv.kv_set, acme, key="a", value=1, ttl=0.2)
    time.sleep(0.3)
    call(kv.kv_set, acme, key="b", value=1)


def test_cant_store_a_value_over_the_platform_limit(acme):
    override(acme, "kv_max_bytes", 10 * limits.MAX_VALUE_BYTES)
    error = refused(kv.kv_set, acme, key="big", value=b"x" * (limits.MAX_VALUE_BYTES + 1))
    assert error.code == "QUOTA_EXCEEDED" and "keep larger data in files" in error.message


@pytest.mark.parametrize("key, message", [
    ("", "non-empty string"),
    (42, "non-empty string"),
    ("a\nb", "control character"),
    ("k" * (limits.MAX_KEY_BYTES + 1), "at most 512 bytes"),
])
def test_cant_use_malformed_keys(acme, key, message):
    error = refused(kv.kv_set, acme, key=key, value=1)
    assert error.code == "INVALID_ARGUMENT" and message in error.message


@pytest.mark.parametrize("ttl", [0, -1, "10", float("inf"), limits.MAX_TTL_SECONDS + 1])
def test_cant_use_a_bad_ttl(acme, ttl):
    assert refused(kv.kv_set, acme, key="k", value=1, ttl=ttl).code == "INVALID_ARGUMENT"


def test_cant_store_values_json_cannot_hold(acme):
    error = refused(kv.kv_set, acme, key="k", value={"n": float("nan")})
    assert error.code == "INVALID_ARGUMENT" and "NaN" in error.message


def test_cant_forge_a_cursor(acme):
    assert refused(kv.kv_list, acme, cursor="!!not base64!!").code == "INVALID_ARGUMENT"


def test_cant_use_kv_on_a_profile_without_it(make_tenant):
    basic = make_tenant("plain", "Basic")
    decision = decide(effective_policy(basic), OPERATIONS["kv.get"], {"key": "k"})
    assert not decision.allowed and decision.code == "PERMISSION_DENIED"
    assert "does not allow a key-value store" in decision.message
    assert refused(kv.kv_get, basic, key="k").code == "PERMISSION_DENIED"


# -- blocks ---------------------------------------------------------------------------

COUNTER = """
export default async () => {
  const before = await symposium.kv.get('runs');
  const count = (before.data ?? 0) + 1;
  await symposium.kv.set('runs', count);
  await symposium.kv.set('last-bytes', new Uint8Array([count, 255]), { ttl: 3600 });
  const bytes = (await symposium.kv.get('last-bytes')).data;
  const listed = await symposium.kv.list({ prefix: 'r' });
  return { count, bytes: Array.from(bytes), listed: listed.data.keys.map((k) => k.key) };
};
"""


def test_values_survive_between_runs(run_block, acme, dispatch_path):
    first = run_block(acme, COUNTER)
    assert first.status == "succeeded", first.error
    assert first.result == {"count": 1, "bytes": [1, 255], "listed": ["runs"]}
    second = run_block(acme, COUNTER)
    assert second.result["count"] == 2 and second.result["bytes"] == [2, 255]


def test_cant_reach_kv_from_a_basic_block(run_block, make_tenant):
    basic = make_tenant("plain", "Basic")
    run = run_block(basic, "export default async () => { try { await symposium.kv.get('x'); } catch (e) { return e.code; } }")
    assert run.result == "PERMISSION_DENIED"
