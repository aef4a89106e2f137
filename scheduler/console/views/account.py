"""Login, logout and the viewer's own preferences (display zone, theme)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from scheduler.console.access import console_view
from scheduler.models import ConsolePreference


class LoginView(auth_views.LoginView):
    template_name = "console/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


class PreferenceForm(forms.ModelForm):
    class Meta:
        model = ConsolePreference
        fields = ["time_zone", "theme"]
        labels = {"time_zone": "Display time zone"}


@console_view
@require_http_methods(["GET", "POST"])
def preferences(request):
    preference, _ = ConsolePreference.objects.get_or_create(user=request.user)
    form = PreferenceForm(request.POST or None, instance=preference)
    if request.method == "POST":
        if form.is_valid():
            form.save()
            messages.success(request, "Preferences saved.")
            return redirect("console:preferences")
        return render(request, "console/preferences.html", {"form": form}, status=400)
    return render(request, "console/preferences.html", {"form": form})
