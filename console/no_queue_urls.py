"""/django-rq/ when no Redis is configured (REDIS_URL empty).

django-rq's pages would then talk to its fallback address, redis://127.0.0.1:6379/0:
whatever Redis happens to listen there (another program's) is shown as ours, and with
none listening its pages answer 500. Without Redis there is no job queue at all, since
capability calls run inline in the server, so every page under /django-rq/ says that
instead. The namespace is django-rq's own, so links to `django_rq:home` keep working.
"""

from django.contrib import admin
from django.urls import path, re_path

from console.views import no_job_queue

app_name = "django_rq"

urlpatterns = [
    path("", admin.site.admin_view(no_job_queue), name="home"),
    re_path(r"^.+$", admin.site.admin_view(no_job_queue)),
]
