"""/api/: the resources, the OpenAPI schema (/api/schema/) and its docs (/api/docs/)."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from scheduler.api import views
from scheduler.api.errors import not_found

app_name = "api"

router = DefaultRouter()
router.register("clusters", views.ClusterViewSet)
router.register("members", views.MemberViewSet)
router.register("jobs", views.JobViewSet)
router.register("schedules", views.ScheduleViewSet)
router.register("tasks", views.TaskViewSet)
router.register("chains", views.JobChainViewSet)
router.register("orders", views.OrderViewSet)
router.register("events", views.EventViewSet)
router.register("executors", views.ExecutorViewSet, basename="executor")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and Redoc come from drf_spectacular_sidecar's static files (no CDN).
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema",
                                                template_name="api/redoc.html"), name="redoc"),
    path("", include(router.urls)),
    re_path(r"^.*$", not_found),
]
