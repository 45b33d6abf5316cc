"""The admin page of vetted npm packages (docs/packages.md)."""

from django.contrib import admin
from django.utils.html import format_html

from isolates.models import NpmPackage
from isolates.packages import bundle_path, cached_bundle


@admin.register(NpmPackage)
class NpmPackageAdmin(admin.ModelAdmin):
    list_display = ("specifier", "allowed_for", "in_cache", "size", "fetched")
    list_filter = ("all_tenants",)
    search_fields = ("name",)
    filter_horizontal = ("tenants",)
    readonly_fields = ("cache", "sha256", "size", "fetched", "added")
    fieldsets = [
        (None, {
            "fields": ("name", "version", "all_tenants", "tenants"),
            "description": "Blocks import an allowed package as <code>npm:NAME@VERSION</code>. "
                           "Allowing does not fetch it: <code>python manage.py addpackage npm:NAME@VERSION</code> does, "
                           "once, without running any of its install scripts.",
        }),
        ("Package cache", {"fields": ("cache", "sha256", "size", "fetched", "added")}),
    ]  # fmt: skip

    @admin.display(description="allowed for")
    def allowed_for(self, obj):
        if obj.all_tenants:
            return "every tenant"
        slugs = [t.slug for t in obj.tenants.all()]
        return ", ".join(slugs) if slugs else "nobody yet"

    @admin.display(description="in the cache", boolean=True)
    def in_cache(self, obj):
        # The list only looks for the file; the package's own page checks its hash too.
        return bool(obj.sha256) and bundle_path(obj.sha256).exists()

    @admin.display(description="state")
    def cache(self, obj):
        if obj.pk and obj.sha256 and cached_bundle(obj.sha256) is not None:
            return "In the cache: blocks of the tenants it is allowed for can import it."
        return format_html("Not in the cache: run <code>python manage.py addpackage {}</code>.", obj.specifier)
