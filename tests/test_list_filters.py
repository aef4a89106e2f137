"""A list's filters from the URL never make a 500: every admin list (ours and Django's own) and
the console's task and audit lists answer values the database cannot take (a date whose offset
takes it past the calendar's end, a whole number beyond 64 bits, a NUL, a search too long for
SQLite) with a message naming the value, and the list."""

from __future__ import annotations

import html

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.db import models
from django.test import Client
from django.urls import reverse

from scheduler.models import Task

PAST_THE_START = "0001-01-01T00:00:00+14:00"  # the year 0 in UTC
PAST_THE_END = "9999-12-31T23:59:59-14:00"  # the year 10000 in UTC
HUGE = "99999999999999999999"
YEARS = "Give a date between the years 2 and 9998."


@pytest.fixture
def web(admin_user):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    return client


@pytest.fixture
def rows(shell_job):
    Task.objects.create(cluster=shell_job.cluster, job=shell_job, trigger="manual",
                        state="succeeded", scheduled_for=shell_job.created_at)


def hostile_filters(model) -> list[tuple[str, str]]:
    """(parameter, value) pairs the database cannot take, for this model's list."""
    out = [("q", "a\x00b"), ("q", "x" * 60_000)]
    if isinstance(model._meta.pk, models.AutoField | models.IntegerField):
        out += [("pk", HUGE), ("pk__in", f"1,{HUGE}"), ("id__gte", f"-{HUGE}")]
    for field in model._meta.concrete_fields:
        if isinstance(field, models.DateTimeField):
            out += [(f"{field.name}__gte", PAST_THE_START), (f"{field.name}__lt", PAST_THE_END),
                    (f"{field.name}__year", HUGE), (f"{field.name}__year", "9999"),
                    (f"{field.name}__month", "13"), (f"{field.name}__day", "0")]
        elif isinstance(field, models.ForeignKey):
            out.append((field.attname, HUGE))
        elif isinstance(field, models.CharField | models.TextField):
            out.append((field.name, "a\x00b"))
    return out


@pytest.mark.parametrize("model", list(admin.site._registry),
                         ids=lambda m: f"{m._meta.app_label}.{m.__name__}")
def test_every_admin_list_refuses_filters_the_database_cannot_take(web, rows, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    for key, value in hostile_filters(model):
        response = web.get(url, {key: value, "o": "1"})
        assert response.status_code == 302, (key, value[:30], response.status_code)
        assert response.url == f"{url}?o=1"  # the list again, without the value refused
        (message,) = [str(m) for m in get_messages(response.wsgi_request)]
        assert message.startswith(f"Filter not applied: {key}="), message
        assert web.get(response.url).status_code == 200


def test_the_date_hierarchy_refuses_a_year_month_or_day_past_the_calendar(web, rows):
    url = reverse("admin:scheduler_task_changelist")
    for params in ({"scheduled_for__year": "9999"},
                   {"scheduled_for__year": "9998", "scheduled_for__month": "13"},
                   {"scheduled_for__year": "2026", "scheduled_for__month": "2",
                    "scheduled_for__day": "32"}):
        response = web.get(url, params)
        assert response.status_code == 302, params
    response = web.get(url, {"scheduled_for__year": "9998", "scheduled_for__month": "12"})
    assert response.status_code == 200  # the calendar's last month, drilled into


def test_an_action_posted_with_refused_filters_changes_nothing(web, rows, shell_job):
    url = reverse("admin:scheduler_job_changelist")
    response = web.post(f"{url}?created_at__year=9999",
                        {"action": "pause_jobs", "_selected_action": [shell_job.pk]})
    assert response.status_code == 302
    shell_job.refresh_from_db()
    assert not shell_job.paused


def test_the_admin_autocomplete_refuses_a_search_too_long(web, rows):
    response = web.get(reverse("admin:autocomplete"), {
        "term": "x" * 60_000, "app_label": "scheduler", "model_name": "task",
        "field_name": "job"})
    assert response.status_code == 400
    assert "Search not run" in response.json()["error"]


def test_a_filter_the_database_can_take_is_applied(web, rows, shell_job):
    url = reverse("admin:scheduler_task_changelist")
    response = web.get(url, {"scheduled_for__gte": "0002-01-01T00:00:00+14:00",
                             "job__id__exact": str(shell_job.pk), "q": "echo"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


@pytest.mark.parametrize(("page", "field"), [("tasks", "scheduled_from"),
                                             ("tasks", "scheduled_to"),
                                             ("audit", "since"), ("audit", "until")])
@pytest.mark.parametrize("value", [PAST_THE_START, PAST_THE_END, "9999-12-31T23:59"])
def test_the_console_lists_refuse_a_date_past_the_calendar(viewer_client, rows, page, field,
                                                           value):
    response = viewer_client.get(reverse(f"console:{page}"), {field: value})
    assert response.status_code == 400
    assert YEARS in html.unescape(response.content.decode())
