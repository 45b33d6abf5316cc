"""The admins' view: the platform overview page (/admin/overview/) and the panels of a
tenant's change page (effective policy against its profile, storage against quota,
recent runs, audit trail).

Figures are aggregated by the database (counts per hour), then put into the chart's
buckets here, so the page costs the same whatever the number of audit rows.
"""

import os
from datetime import timedelta

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Avg, Count, F, Q
from django.db.models.functions import TruncHour
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from capabilities.files.beneath import O_DIR
from capabilities.files.quota import measure_usage
from console.charts import OUTCOME_COLOURS, PALETTE, human_bytes, human_ms, horizontal_bars, meter, stacked_bars
from tenants.admin import PermissionProfileAdmin
from tenants.models import OVERRIDABLE_FIELDS, AuditLog, BlockRun, PermissionProfile, Tenant, split_list
from tenants.policy import effective_policy

# Chart periods: how far back, the bucket size, and how buckets are labelled.
RANGES = {
    "24h": {"title": "Last 24 hours", "span": timedelta(hours=24), "bucket": timedelta(hours=1), "label": "%b %d %H:00",
            "tick": lambda b: b.strftime("%H:00") if b.hour % 3 == 0 else ""},
    "7d": {"title": "Last 7 days", "span": timedelta(days=7), "bucket": timedelta(hours=6), "label": "%a %b %d %H:00",
           "tick": lambda b: b.strftime("%a %d") if b.hour == 0 else ""},
    "30d": {"title": "Last 30 days", "span": timedelta(days=30), "bucket": timedelta(days=1), "label": "%a %b %d",
            "tick": lambda b: b.strftime("%b %d") if b.toordinal() % 3 == 0 else ""},
}
DEFAULT_RANGE = "7d"
# Tenants drawn as their own series; the rest are summed as "others".
TOP_TENANTS = 7
# Audit rows that are not capability calls: refused runner requests, refused frames,
# admins' policy actions, deploys and schedule changes of saved blocks.
NOT_CALLS = ("runner", "broker", "admin", "blocks")
DENIAL_COLOURS = {"PERMISSION_DENIED": "#c62828", "RATE_LIMITED": "#ef6c00", "QUOTA_EXCEEDED": "#8e24aa",
                  "INVALID_ARGUMENT": "#1565c0", "other": "#9e9e9e"}


def buckets_for(range_key, now=None):
    spec = RANGES[range_key]
    now = now or timezone.now()
    size = spec["bucket"]
    # Align buckets to whole hours (or days), counted in UTC.
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if size >= timedelta(days=1):
        last = day_start
    else:
        hours = int(size.total_seconds() // 3600)
        last = day_start + timedelta(hours=(now.hour // hours) * hours)
    count = int(spec["span"] / size)
    start = last - size * (count - 1)
    return start, size, [(start + size * i) for i in range(count)]


def bucketed(rows, start, size, count, key):
    """{series name: [count per bucket]} from rows of (hour, name, n)."""
    series = {}
    for hour, name, n in rows:
        if hour is None:
            continue
        index = int((hour - start) / size)
        if 0 <= index < count:
            series.setdefault(key(name), [0] * count)[index] += n
    return series


def top_series(series, limit=TOP_TENANTS):
    """The `limit` largest series by total, the rest summed as 'others'."""
    ranked = sorted(series, key=lambda name: -sum(series[name]))
    kept = {name: series[name] for name in ranked[:limit]}
    rest = ranked[limit:]
    if rest:
        kept["others"] = [sum(series[name][i] for name in rest) for i in range(len(next(iter(series.values()))))]
    return kept


def tenant_colours(names):
    return {name: ("#b0b0b0" if name == "others" else PALETTE[i % len(PALETTE)]) for i, name in enumerate(names)}


def call_label(row):
    target = f" {row['target']}" if row["target"] else ""
    return f"{row['tenant_slug']} · {row['operation']}{target}"


def overview_context(range_key):
    now = timezone.now()
    start, size, bucket_starts = buckets_for(range_key, now)
    count = len(bucket_starts)
    labels = [b.strftime(RANGES[range_key]["label"]) for b in bucket_starts]
    ticks = [RANGES[range_key]["tick"](b) for b in bucket_starts]
    runs = BlockRun.objects.filter(created__gte=start)
    audit = AuditLog.objects.filter(time__gte=start)
    calls = audit.exclude(capability__in=NOT_CALLS)

    run_rows = runs.annotate(h=TruncHour("created")).values_list("h", "tenant__slug").annotate(n=Count("id")).order_by()
    run_series = top_series(bucketed(run_rows, start, size, count, str))
    call_rows = calls.annotate(h=TruncHour("time")).values_list("h", "tenant_slug").annotate(n=Count("id")).order_by()
    call_series = top_series(bucketed(call_rows, start, size, count, str))
    # One colour per tenant across both charts.
    colours = tenant_colours(list(dict.fromkeys([*run_series, *call_series])))
    denial_rows = (audit.filter(outcome="denied").annotate(h=TruncHour("time")).values_list("h", "error_code")
                   .annotate(n=Count("id")).order_by())
    denial_series = bucketed(denial_rows, start, size, count, lambda code: code if code in DENIAL_COLOURS else "other")
    denial_series = {code: denial_series[code] for code in DENIAL_COLOURS if code in denial_series}

    fields = ["time", "tenant_slug", "operation", "target", "outcome", "duration_ms", "bytes_in", "bytes_out", "run_id"]
    slowest = list(calls.filter(duration_ms__isnull=False).exclude(outcome="denied").order_by("-duration_ms").values(*fields)[:10])
    largest = list(calls.annotate(size=F("bytes_in") + F("bytes_out")).filter(size__gt=0).order_by("-size").values(*fields, "size")[:10])

    outcomes = dict(runs.values_list("status").annotate(n=Count("id")).order_by())
    call_totals = calls.aggregate(n=Count("id"), failed=Count("id", filter=Q(outcome="failed")), avg=Avg("duration_ms"))
    denied = audit.filter(outcome="denied")
    per_tenant = {}
    for slug, n in runs.values_list("tenant__slug").annotate(n=Count("id")).order_by():
        per_tenant.setdefault(slug, {})["runs"] = n
    for slug, n, failed in calls.values_list("tenant_slug").annotate(n=Count("id"), failed=Count("id", filter=Q(outcome="failed"))).order_by():
        per_tenant.setdefault(slug, {}).update(calls=n, failed=failed)
    for slug, n, limited in denied.values_list("tenant_slug").annotate(n=Count("id"), limited=Count("id", filter=Q(error_code="RATE_LIMITED"))).order_by():
        per_tenant.setdefault(slug, {}).update(denied=n, rate_limited=limited)
    tenant_ids = dict(Tenant.objects.filter(slug__in=per_tenant).values_list("slug", "pk"))
    table = sorted(
        ({"slug": slug or "(deleted)", "pk": tenant_ids.get(slug), "runs": v.get("runs", 0), "calls": v.get("calls", 0),
          "failed": v.get("failed", 0), "denied": v.get("denied", 0), "rate_limited": v.get("rate_limited", 0)}
         for slug, v in per_tenant.items()),
        key=lambda row: (-row["calls"] - row["runs"], row["slug"]),
    )
    by_capability = list(calls.values_list("capability").annotate(n=Count("id")).order_by("-n"))

    return {
        "range": range_key,
        "ranges": [(key, spec["title"]) for key, spec in RANGES.items()],
        "range_title": RANGES[range_key]["title"],
        "since": start,
        "tiles": [
            {"label": "Runs", "value": f"{sum(outcomes.values()):,}",
             "detail": f"{outcomes.get('succeeded', 0):,} succeeded · {outcomes.get('failed', 0) + outcomes.get('timed_out', 0):,} failed or timed out"},
            {"label": "Capability calls", "value": f"{call_totals['n']:,}",
             "detail": f"{call_totals['failed']:,} failed · average {human_ms(call_totals['avg'])}"},
            {"label": "Denials", "value": f"{denied.count():,}", "tone": "bad" if denied.exists() else "",
             "detail": f"{denied.filter(error_code='PERMISSION_DENIED').count():,} permission · {denied.filter(capability='runner').count():,} runner requests"},
            {"label": "Rate-limit hits", "value": f"{denied.filter(error_code='RATE_LIMITED').count():,}",
             "tone": "warn" if denied.filter(error_code="RATE_LIMITED").exists() else "",
             "detail": "calls refused for going too fast"},
        ],
        "runs_chart": stacked_bars(labels, run_series, ticks=ticks, colours=colours, unit=" runs"),
        "calls_chart": stacked_bars(labels, call_series, ticks=ticks, colours=colours, unit=" calls"),
        "denials_chart": stacked_bars(labels, denial_series, ticks=ticks, colours=DENIAL_COLOURS, unit=" denied", empty="No denials in this period."),
        "outcomes_chart": horizontal_bars(
            [{"label": BlockRun(status=s).get_status_display(), "value": outcomes.get(s, 0), "colour": OUTCOME_COLOURS[s]}
             for s in ("succeeded", "failed", "timed_out", "killed", "running", "queued") if outcomes.get(s)],
            empty="No runs in this period."),
        "capability_chart": horizontal_bars(
            [{"label": cap, "value": n, "colour": PALETTE[i % len(PALETTE)]} for i, (cap, n) in enumerate(by_capability)],
            empty="No calls in this period."),
        "slowest_chart": horizontal_bars(
            [{"label": call_label(r), "value": r["duration_ms"], "detail": f"{r['time']:%Y-%m-%d %H:%M:%S} · {r['outcome']}",
              "colour": "#ef6c00" if r["outcome"] == "failed" else "#0072B2"} for r in slowest],
            formatter=human_ms, empty="No calls in this period."),
        "largest_chart": horizontal_bars(
            [{"label": call_label(r), "value": r["size"], "detail": f"{r['time']:%Y-%m-%d %H:%M:%S} · {r['outcome']}",
              "colour": "#009E73"} for r in largest],
            formatter=human_bytes, empty="No calls in this period."),
        "slowest": slowest,
        "largest": largest,
        "table": table,
    }


def overview_view(request):
    """The admin's overview. Staff only (admin_view), and only for admins allowed to read
    the audit log and the runs: the page shows every tenant's activity."""
    if not (request.user.has_perm("tenants.view_auditlog") and request.user.has_perm("tenants.view_blockrun")):
        raise PermissionDenied
    range_key = request.GET.get("range") if request.GET.get("range") in RANGES else DEFAULT_RANGE
    context = {**admin.site.each_context(request), "title": "Platform overview", **overview_context(range_key)}
    return render(request, "admin/overview.html", context)


# -- the tenant's change page --------------------------------------------------------

BYTE_FIELDS = {"max_file_size", "storage_quota", "max_response_size", "database_max_result_bytes", "process_max_output",
               "console_output_cap"}


def display_value(name, value):
    if name in BYTE_FIELDS:
        return f"{human_bytes(value)} ({value:,} bytes)" if value else "0"
    field = PermissionProfile._meta.get_field(name)
    if field.choices:
        return dict(field.choices).get(value, value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(value) if value else "—"
    if isinstance(value, str):
        return ", ".join(split_list(value)) or "—"
    if name.endswith("_per_minute") and value == 0:
        return "0 (no limit)"
    if name == "memory_mb":
        return f"{value} MB"
    if name.endswith("_seconds"):
        return f"{value} s"
    if name.endswith("_ms"):
        return f"{value:,} ms"
    return f"{value:,}" if isinstance(value, int) else str(value)


def policy_sections(tenant, policy):
    profile = tenant.profile
    sections = []
    for title, options in PermissionProfileAdmin.fieldsets[1:]:
        rows = []
        for name in options["fields"]:
            if name not in OVERRIDABLE_FIELDS:
                continue
            profile_value = getattr(profile, name)
            effective = getattr(policy, name)
            rows.append({
                "label": PermissionProfile._meta.get_field(name).verbose_name.capitalize(),
                "name": name,
                "profile": display_value(name, profile_value),
                "effective": display_value(name, effective),
                "overridden": name in policy.overridden,
            })
        sections.append({"title": title, "rows": rows})
    return sections


def storage_use(tenant):
    """Bytes in the tenant's storage, walked without following links (the quota's count)."""
    try:
        root_fd = os.open(tenant.storage_root(), O_DIR)
    except OSError:
        return 0
    try:
        return measure_usage(root_fd)
    finally:
        os.close(root_fd)


def tenant_panels(tenant):
    """The context of the panels on a tenant's change page."""
    tenant = Tenant.objects.select_related("profile").prefetch_related("overrides").get(pk=tenant.pk)
    policy = effective_policy(tenant)
    used = storage_use(tenant)
    now = timezone.now()
    days = 14
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    rows = (BlockRun.objects.filter(tenant=tenant, created__gte=start).annotate(h=TruncHour("created"))
            .values_list("h", "status").annotate(n=Count("id")).order_by())
    by_status = bucketed(rows, start, timedelta(days=1), days, str)
    by_status = {s: by_status[s] for s in OUTCOME_COLOURS if s in by_status}
    labels = [(start + timedelta(days=i)).strftime("%a %b %d") for i in range(days)]
    ticks = [(start + timedelta(days=i)).strftime("%d") for i in range(days)]
    audit = AuditLog.objects.filter(tenant=tenant)
    week = now - timedelta(days=7)
    return {
        "panels": {
            "policy": policy_sections(tenant, policy),
            "overridden_count": len(policy.overridden),
            "profile_name": tenant.profile.name,
            "profile_url": reverse("admin:tenants_permissionprofile_change", args=[tenant.profile_id]),
            "storage_used": human_bytes(used),
            "storage_quota": human_bytes(policy.storage_quota),
            "storage_meter": meter(used, policy.storage_quota),
            "runs_chart": stacked_bars(labels, ticks=ticks, series={BlockRun(status=s).get_status_display(): v for s, v in by_status.items()},
                                       colours={BlockRun(status=s).get_status_display(): OUTCOME_COLOURS[s] for s in by_status},
                                       width=1100, height=170, unit=" runs", empty="No runs in the last 14 days."),
            "recent_runs": list(BlockRun.objects.filter(tenant=tenant).select_related("user").order_by("-created")[:10]),
            "audit_rows": list(audit.select_related("user").order_by("-time", "-id")[:15]),
            "week": {
                "runs": BlockRun.objects.filter(tenant=tenant, created__gte=week).count(),
                "calls": audit.filter(time__gte=week).exclude(capability__in=NOT_CALLS).count(),
                "denied": audit.filter(time__gte=week, outcome="denied").count(),
                "rate_limited": audit.filter(time__gte=week, error_code="RATE_LIMITED").count(),
            },
            "runs_url": reverse("admin:tenants_blockrun_changelist") + f"?tenant__id__exact={tenant.pk}",
            "audit_url": reverse("admin:tenants_auditlog_changelist") + f"?tenant__id__exact={tenant.pk}",
            "runner_url": reverse("runner") + f"?tenant={tenant.slug}",
            "overview_url": reverse("admin-overview"),
        }
    }
