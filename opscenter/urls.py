from django.contrib import admin
from django.urls import include, path

from scheduler.ops import views as ops_views

urlpatterns = [
    path("admin/", admin.site.urls),
    # Operations (scheduler/ops): health for load balancers, metrics for Prometheus.
    path("healthz", ops_views.healthz, name="healthz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("", include("scheduler.console.urls")),
]
