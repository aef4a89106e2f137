from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from scheduler.ops import views as ops_views

urlpatterns = [
    path("admin/", admin.site.urls),
    # Browsers ask for it on every page that names none (the admin's): the console's icon.
    path("favicon.ico", RedirectView.as_view(url=static("console/favicon.svg"), permanent=True)),
    # Operations (scheduler/ops): health for load balancers, metrics for Prometheus.
    path("healthz", ops_views.healthz, name="healthz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/", include("scheduler.api.urls")),
    path("", include("scheduler.console.urls")),
]
