"""The console's doors: login required, the view permission checked, preferences refused
with a message when wrong and kept when right."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from scheduler.models import ConsolePreference
from tests.conftest import console_user

pytestmark = pytest.mark.django_db


def test_anonymous_visitors_are_sent_to_the_login_page():
    response = Client().get(reverse("console:dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:login"))


def test_a_user_without_a_scheduler_group_gets_403_not_a_login_loop(nobody_client):
    response = nobody_client.get(reverse("console:dashboard"))
    assert response.status_code == 403


def test_a_viewer_logs_in_and_sees_the_dashboard(db):
    console_user("vera", "viewer")
    client = Client()
    response = client.post(reverse("console:login"), {"username": "vera", "password": "pw-vera"})
    assert response.status_code == 302
    page = client.get(reverse("console:dashboard"))
    assert page.status_code == 200
    assert b"Dashboard" in page.content


def test_a_wrong_password_says_so_and_logs_nobody_in(db):
    console_user("vera", "viewer")
    client = Client()
    response = client.post(reverse("console:login"), {"username": "vera", "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get(reverse("console:dashboard")).status_code == 302


def test_a_bad_display_zone_is_refused_and_changes_nothing(viewer_client):
    response = viewer_client.post(reverse("console:preferences"),
                                  {"time_zone": "Mars/Olympus", "theme": "dark"})
    assert response.status_code == 400
    assert b"time zone" in response.content.lower()
    assert not ConsolePreference.objects.filter(theme="dark").exists()


def test_a_display_zone_is_kept_and_used_on_every_page(viewer_client):
    response = viewer_client.post(reverse("console:preferences"),
                                  {"time_zone": "Europe/Berlin", "theme": "dark"})
    assert response.status_code == 302
    page = viewer_client.get(reverse("console:dashboard")).content.decode()
    assert 'data-zone="Europe/Berlin"' in page
    assert 'data-theme="dark"' in page


def test_the_favicon_that_browsers_ask_for_is_the_consoles():
    response = Client().get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("console/favicon.svg")
