"""The dashboard: a health card per cluster (late and dead members highlighted), running
tasks, failures of the last hour and day linked to the tasks list, the fires-per-minute chart
(accessible), recent events, the live renderer of topic `dashboard`, and a query count that
does not grow with the clusters, members or tasks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from scheduler.console import live
from scheduler.console.views.dashboard import render_dashboard
from scheduler.models import Cluster, Event, Job, Member, Task
from tests.conftest import client_for, console_user
from tests.test_console_cluster import add_member

pytestmark = pytest.mark.django_db


@pytest.fixture
def install():
    passive = Cluster.objects.create(name="pas", mode="passive")
    p = add_member(passive, "p", "active", role="primary")
    add_member(passive, "b1", "standby", role="backup")
    Cluster.objects.filter(pk=passive.pk).update(lease_holder=p)
    active = Cluster.objects.create(name="act", mode="active")
    m1 = add_member(active, "m1", "active")
    add_member(active, "m2", "dead", stop_reason="no heartbeat for 5 s")
    job = Job.objects.create(cluster=active, name="nightly", kind="shell", command="true")
    return {"passive": passive, "active": active, "p": p, "m1": m1, "job": job}


def add_task(job, state, *, minutes_ago=0.0, member=None, **kw):
    now = timezone.now()
    values = dict(scheduled_for=now - timedelta(minutes=minutes_ago), trigger="manual",
                  state=state, member=member)
    if state == "running":
        values["started_at"] = now - timedelta(minutes=minutes_ago)
    elif state != "queued":
        values["finished_at"] = now - timedelta(minutes=minutes_ago)
    values.update(kw)
    return Task.objects.create(cluster=job.cluster, job=job, **values)


def dashboard(client) -> str:
    response = client.get(reverse("console:dashboard"))
    assert response.status_code == 200
    return response.content.decode()


def card(html, cluster) -> str:
    match = re.search(rf'<article id="cluster-card-{cluster.pk}".*?</article>', html, re.S)
    assert match
    return match.group(0)


def test_anonymous_visitors_go_to_log_in_and_others_get_403(nobody_client):
    assert Client().get(reverse("console:dashboard")).status_code == 302
    assert nobody_client.get(reverse("console:dashboard")).status_code == 403


def test_a_fresh_install_says_how_to_start(viewer_client):
    assert "No cluster yet" in dashboard(viewer_client)


def test_each_cluster_has_a_health_card(viewer_client, install):
    html = dashboard(viewer_client)
    passive, active = card(html, install["passive"]), card(html, install["active"])
    assert 'data-health="ok"' in passive and "healthy" in passive
    assert "passive (fail-over)" in passive and "2 live / 2" in passive
    assert '<dd class="lease-holder">p</dd>' in passive
    # A member of the active cluster died: the card says so.
    assert 'data-health="warn"' in active and "m2 dead" in active
    assert "1 live / 2" in active and "1 dead" in active
    assert f'href="{reverse("console:cluster", args=[install["active"].pk])}"' in active


def test_late_and_overdue_members_are_highlighted(viewer_client, install):
    Member.objects.filter(pk=install["p"].pk).update(
        heartbeat_at=F("heartbeat_at") - timedelta(seconds=3))
    html = card(dashboard(viewer_client), install["passive"])
    assert 'data-health="warn"' in html and "p: heartbeat late" in html
    Member.objects.filter(pk=install["p"].pk).update(
        heartbeat_at=F("heartbeat_at") - timedelta(seconds=10))
    html = card(dashboard(viewer_client), install["passive"])
    assert 'data-health="bad"' in html and "p: no heartbeat for" in html


def test_a_cluster_without_a_live_member_is_bad(viewer_client, install):
    Member.objects.filter(cluster=install["passive"]).update(state="stopped",
                                                             stopped_at=timezone.now())
    html = card(dashboard(viewer_client), install["passive"])
    assert 'data-health="bad"' in html and "no live member" in html


def test_running_tasks_are_counted_and_the_longest_shown(viewer_client, install):
    job, m1 = install["job"], install["m1"]
    oldest = add_task(job, "running", minutes_ago=30, member=m1)
    for i in range(6):
        add_task(job, "running", minutes_ago=i, member=m1)
    html = dashboard(viewer_client)
    assert "7 tasks running" in html
    assert "7 tasks" in card(html, install["active"])
    running = html[html.index('id="running-tasks"'):html.index('id="events-heading"')]
    assert running.count('data-task-state="running"') == 5
    first = re.search(r'id="running-task-(\d+)"', running).group(1)
    assert int(first) == oldest.pk  # the longest-running first
    assert f'href="{reverse("console:task", args=[oldest.pk])}"' in running


def test_failures_of_the_last_hour_and_day_link_to_the_tasks_list(viewer_client, install):
    job = install["job"]
    add_task(job, "failed", minutes_ago=5)
    add_task(job, "failed", minutes_ago=120)
    add_task(job, "timed_out", minutes_ago=30)
    add_task(job, "lost", minutes_ago=60 * 20)
    add_task(job, "failed", minutes_ago=60 * 30)  # older than a day
    add_task(job, "succeeded", minutes_ago=1)
    html = card(dashboard(viewer_client), install["active"])
    pk = install["active"].pk

    def counts(state):
        row = re.search(rf'<tr data-failure="{state}">.*?</tr>', html, re.S).group(0)
        return [int(n) for n in re.findall(r">(\d+)</a>", row)]

    assert counts("failed") == [1, 2]
    assert counts("timed_out") == [1, 1]
    assert counts("lost") == [0, 1]
    assert f'href="/tasks/?state=failed&amp;cluster={pk}&amp;since=1h"' in html


def test_the_fires_chart_is_accessible_and_counts_per_minute(viewer_client, install):
    job = install["job"]
    for _ in range(3):
        add_task(job, "succeeded", minutes_ago=2)
    add_task(job, "succeeded", minutes_ago=10)
    add_task(job, "succeeded", minutes_ago=90)  # outside the chart
    html = card(dashboard(viewer_client), install["active"])
    svg = re.search(r"<svg .*?</svg>", html, re.S).group(0)
    assert 'role="img"' in svg and "<title" in svg and "4 in all, at most 3 a minute" in svg
    assert svg.count("<rect") == 2
    table = re.search(r'<table class="visually-hidden">.*?</table>', html, re.S).group(0)
    assert "<caption>Fires per minute of act</caption>" in table
    values = [int(v) for v in re.findall(r"<td>(\d+)</td></tr>", table)]
    assert len(values) == 60 and sum(values) == 4 and max(values) == 3


def test_recent_events_are_listed_and_escaped(viewer_client, install):
    Event.record(install["active"].pk, Event.Kind.JOB_PAUSED, message="<script>x()</script>",
                 actor="<b>eve</b>")
    html = dashboard(viewer_client)
    events = html[html.index('id="recent-events"'):]
    assert "&lt;script&gt;x()&lt;/script&gt;" in events and "<script>x" not in html
    assert "&lt;b&gt;eve&lt;/b&gt;" in events


def test_the_pushed_fragments_carry_the_pages_ids(install):
    html = render_dashboard(None, [live.Viewer(False, False)])[0]
    top_level = re.findall(r'^<(\w+) id="([\w-]+)"[^>]*hx-swap-oob="true"', html, re.M)
    assert [i for _, i in top_level] == ["cluster-cards", "running-tasks", "recent-events"]
    assert f'id="cluster-card-{install["active"].pk}"' in html


def _count(client) -> int:
    client.get(reverse("console:dashboard"))
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("console:dashboard")).status_code == 200
    return len(queries)


def test_the_query_count_does_not_grow(install):
    client = client_for(console_user("olga", "operator"))
    few = _count(client)
    for c in range(5):
        cluster = Cluster.objects.create(name=f"c{c}", mode="active")
        job = Job.objects.create(cluster=cluster, name="j", kind="shell", command="true")
        for i in range(5):
            member = add_member(cluster, f"m{i}", "active")
            add_task(job, "running", minutes_ago=i, member=member)
            add_task(job, "failed", minutes_ago=i * 7)
            Event.record(cluster.pk, Event.Kind.MEMBER_JOINED, member=member, message="joined")
    assert _count(client) == few
    assert few <= 13  # PostgreSQL reads its clock once more than SQLite


def test_settled_minutes_are_counted_once_then_cached(install):
    """Each render used to group the last hour's tasks (3.6 M rows at 1,000 fires/s): the
    settled minutes now come from the process's cache, only the newest are queried."""
    from scheduler.console.views import dashboard as views

    job, active = install["job"], install["active"]
    add_task(job, "succeeded", minutes_ago=10)
    first = views.dashboard_context()["cards"]
    assert [c for c in first if c["c"] == active][0]["chart"]["total"] == 1
    assert len(views.FIRES.minutes) >= views.CHART_MINUTES - 2  # all but the newest
    add_task(job, "succeeded", minutes_ago=10)  # a settled minute: not read again
    add_task(job, "succeeded", minutes_ago=0)  # the current minute: read every render
    with CaptureQueriesContext(connection) as queries:
        cards = views.dashboard_context()["cards"]
    assert [c for c in cards if c["c"] == active][0]["chart"]["total"] == 2
    fires_sql = [q["sql"] for q in queries if "scheduled_for" in q["sql"]
                 and "GROUP BY" in q["sql"].upper()]
    assert len(fires_sql) == 1
    views.FIRES.clear()  # a new process: the hour is counted again, once
    cards = views.dashboard_context()["cards"]
    assert [c for c in cards if c["c"] == active][0]["chart"]["total"] == 3
