"""The console's audit log: every operator action from every door, filtered and paged."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.urls import reverse

from scheduler.eventlog import Actor
from scheduler.models import Cluster, Event, Member
from tests.conftest import client_for, console_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def actions(cluster, shell_job):
    """One action from each door, and events of the nodes that are not operator actions."""
    member = Member.objects.create(cluster=cluster, name="node-a", mode="passive", host="h",
                                   pid=1, version="1", state="active")
    shell_job.pause(Actor("ada", "admin", "maintenance window"))
    shell_job.resume(Actor("carl", "cli", ""))
    task = shell_job.run_now(Actor("otto", "console", "rerun <b>now</b>"))
    task.request_cancel("changed my mind", Actor("otto", "console", "changed my mind"))
    Event.record(cluster.pk, Event.Kind.SWITCHOVER_REQUESTED,
                 actor=Actor("api-bot", "api", "drill"),
                 member=member, message="switch over to node-a requested")
    Event.record(cluster.pk, Event.Kind.MEMBER_JOINED, actor="node-a", member=member,
                 message="node-a joined")
    Event.record(cluster.pk, Event.Kind.TASK_FAILED, actor="node-a", message="task failed")
    return {"job": shell_job, "task": task, "member": member}


def kinds(response):
    return [e.kind for e in response.context["page"].rows]


def test_every_operator_action_from_every_door_and_nothing_else(viewer_client, actions):
    response = viewer_client.get(reverse("console:audit"))
    assert response.status_code == 200
    assert kinds(response) == ["switchover.requested", "task.cancel", "job.run_now",
                               "job.resumed", "job.paused"]
    html = response.content.decode()
    for text in ("maintenance window", "ada", "carl", "api-bot", "command line", "API",
                 "Admin", f'href="/tasks/{actions["task"].pk}/"',
                 f'href="/jobs/{actions["job"].pk}/"',
                 f'#member-{actions["member"].pk}"'):
        assert text in html, text
    assert "rerun &lt;b&gt;now&lt;/b&gt;" in html  # reasons are escaped
    assert "node-a joined" not in html


@pytest.mark.parametrize(("params", "expected"), [
    ({"source": "console"}, ["task.cancel", "job.run_now"]),
    ({"actor": "ada"}, ["job.paused"]),
    ({"kind": ["job.paused", "job.resumed"]}, ["job.resumed", "job.paused"]),
    ({"kind": "switchover.requested", "source": "api"}, ["switchover.requested"]),
    ({"since": "2000-01-01T00:00", "until": "2999-01-01T00:00"},
     ["switchover.requested", "task.cancel", "job.run_now", "job.resumed", "job.paused"]),
    ({"until": "2000-01-01T00:00"}, []),
])
def test_filters(viewer_client, actions, params, expected):
    response = viewer_client.get(reverse("console:audit"), params)
    assert response.status_code == 200
    assert kinds(response) == expected


def test_the_cluster_filter(viewer_client, actions, cluster):
    other = Cluster.objects.create(name="other")
    Event.record(other.pk, Event.Kind.JOB_PAUSED, actor=Actor("zoe", "console"),
                 message="job x paused")
    assert kinds(viewer_client.get(reverse("console:audit"), {"cluster": other.pk})) == [
        "job.paused"]
    assert len(kinds(viewer_client.get(reverse("console:audit"), {"cluster": cluster.pk}))) == 5


@pytest.mark.parametrize("params", [
    {"since": "not a date"}, {"until": "2026-02-30T10:00"}, {"kind": "member.joined"},
    {"source": "telepathy"}, {"cluster": "x"},
    {"since": "2026-03-02T00:00", "until": "2026-03-01T00:00"},
])
def test_bad_filters_say_so_with_400(viewer_client, actions, params):
    response = viewer_client.get(reverse("console:audit"), params)
    assert response.status_code == 400
    assert b"These filters cannot be used" in response.content


@pytest.mark.parametrize("params", [{"after": "x"}, {"before": "~~"}, {"size": "-3"},
                                    {"after": "5~abc"}])
def test_bad_page_cursors_give_the_first_page(viewer_client, actions, params):
    assert viewer_client.get(reverse("console:audit"), params).status_code == 200


def test_keyset_pages_walk_every_action_once(viewer_client, cluster, actions):
    Event.objects.bulk_create([
        Event(cluster=cluster, kind="job.paused", actor=f"u{i}", source="cli", message=f"p{i}")
        for i in range(120)])
    expected = list(Event.objects.filter(kind__in=Event.OPERATOR_KINDS).order_by("-id")
                    .values_list("id", flat=True))
    seen, query = [], {"size": 25}
    while True:
        page = viewer_client.get(reverse("console:audit") + "?" + urlencode(query)).context["page"]
        seen.extend(e.pk for e in page.rows)
        if not page.after:
            break
        query = {"size": 25, "after": page.after}
    assert seen == expected


def test_an_htmx_request_gets_the_list_only(viewer_client, actions):
    html = viewer_client.get(reverse("console:audit"), headers={"HX-Request": "true"}).content
    assert html.decode().lstrip().startswith('<div id="audit-list">')


def test_access(db, actions):
    from django.test import Client

    assert Client().get(reverse("console:audit")).status_code == 302
    assert client_for(console_user("nemo", None)).get(reverse("console:audit")).status_code == 403
    assert client_for(console_user("otto", "operator")).get(
        reverse("console:audit")).status_code == 200


def test_every_input_has_a_label(viewer_client, actions):
    html = viewer_client.get(reverse("console:audit")).content.decode()
    for name in ("id_cluster", "id_actor", "id_source", "id_since", "id_until"):
        assert f'for="{name}"' in html and f'id="{name}"' in html
    assert "<legend>Action</legend>" in html
    assert '<th scope="col">Reason</th>' in html
