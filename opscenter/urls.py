from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("scheduler.api.urls")),
    path("", include("scheduler.console.urls")),
]
