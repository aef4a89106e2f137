from __future__ import annotations

from django.urls import path

from scheduler.console.views import account, dashboard

app_name = "console"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("login/", account.LoginView.as_view(), name="login"),
    path("logout/", account.LogoutView.as_view(), name="logout"),
    path("preferences/", account.preferences, name="preferences"),
]
