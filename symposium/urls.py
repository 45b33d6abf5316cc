from django.contrib import admin
from django.urls import path

from tenants.login import one_time_login

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/<str:token>/", one_time_login, name="one-time-login"),
]
