from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from blocks.api import api as blocks_api
from blocks.endpoints import endpoint as block_endpoint
from console import saved_blocks
from console import type_checks
from console import views as runner
from console.login import one_time_login
from console.overview import overview_view

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="runner"), name="home"),
    # Before admin.site.urls, whose catch-all would take these paths.
    path("admin/overview/", admin.site.admin_view(overview_view), name="admin-overview"),
    path("admin/", admin.site.urls),
    # Without Redis there is no queue to show (console/no_queue_urls.py says so).
    path("django-rq/", include("django_rq.urls" if settings.REDIS_URL else "console.no_queue_urls")),
    path("login/", runner.login_view, name="login"),
    path("logout/", runner.logout_view, name="logout"),
    path("login/<str:token>/", one_time_login, name="one-time-login"),
    path("runner/", runner.runner_page, name="runner"),
    path("runner/symposium.d.ts", runner.symposium_types, name="runner-types"),
    path("runner/<slug:slug>/runs/", runner.history_json, name="runner-history"),
    path("runner/<slug:slug>/runs/<str:run_id>/", runner.run_json, name="runner-run"),
    path("runner/<slug:slug>/files/<path:path>", runner.download_file, name="runner-file"),
    path("runner/<slug:slug>/check/", type_checks.check_view, name="runner-check"),
    path("runner/<slug:slug>/blocks/", saved_blocks.block_list, name="runner-blocks"),
    path("runner/<slug:slug>/blocks/<slug:block_slug>/", saved_blocks.block_detail, name="runner-block"),
    path("runner/<slug:slug>/blocks/<slug:block_slug>/versions/<int:number>/", saved_blocks.version_detail,
         name="runner-block-version"),
    path("runner/<slug:slug>/blocks/<slug:block_slug>/diff/", saved_blocks.version_diff, name="runner-block-diff"),
    path("runner/<slug:slug>/blocks/<slug:block_slug>/save/", saved_blocks.save_version, name="runner-block-save"),
    path("runner/<slug:slug>/blocks/<slug:block_slug>/deploy/", saved_blocks.deploy_version, name="runner-block-deploy"),
    # Saved blocks: the API for applications, and each block's own HTTP endpoint.
    path("api/v1/", blocks_api.urls),
    path("b/<slug:tenant>/<slug:block>/", block_endpoint, name="block-endpoint"),
    path("b/<slug:tenant>/<slug:block>/<path:path>", block_endpoint, name="block-endpoint-path"),
]

if not settings.PRODUCTION:
    # Development (runserver, runblock's and the tests' in-process Daphne) serves the
    # static files itself, found by the staticfiles finders (never outside their
    # folders). In production they are collected to STATIC_ROOT for the web server.
    urlpatterns.append(re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}))
