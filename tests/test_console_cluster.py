"""The cluster tab: every member with its state and heartbeat age, the lease, the event
timeline, switch-over (who may, and bad input refused changing nothing), the live renderer
of topic cluster:<pk>, and a query count that does not grow with the members."""

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
from scheduler.console.access import NOT_SWITCHER
from scheduler.console.views.cluster import render_cluster
from scheduler.models import Cluster, Event, Member
from tests.conftest import client_for, console_user

pytestmark = pytest.mark.django_db


def add_member(cluster, name, state="standby", **kw):
    values = dict(mode=cluster.mode or "passive", host="host-" + name, ip="10.0.0.1", pid=4242,
                  version="0.1.0", workers=8, heartbeat_interval=1.0, dead_after=5.0)
    values.update(kw)
    if state not in Member.LIVE_STATES:
        values.setdefault("stopped_at", timezone.now())
    return Member.objects.create(cluster=cluster, name=name, state=state, **values)


@pytest.fixture
def passive():
    cluster = Cluster.objects.create(name="pas", mode="passive")
    primary = add_member(cluster, "p", "active", role="primary")
    backup = add_member(cluster, "b1", "standby", role="backup", backup_precedence=1)
    dead = add_member(cluster, "b2", "dead", role="backup", stop_reason="no heartbeat for 5 s",
                      declared_dead_by="p")
    stopped = add_member(cluster, "old", "stopped", stop_reason="SIGTERM")
    Cluster.objects.filter(pk=cluster.pk).update(lease_holder=primary, lease_epoch=7,
                                                 lease_expires_at=timezone.now())
    cluster.refresh_from_db()
    return {"cluster": cluster, "primary": primary, "backup": backup, "dead": dead,
            "stopped": stopped}


def page(client, cluster, query=""):
    response = client.get(reverse("console:cluster", args=[cluster.pk]) + query)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def row(html, member):
    match = re.search(rf'<tr id="member-{member.pk}"[^>]*>.*?</tr>', html, re.S)
    assert match, f"no row for member {member.name}"
    return match.group(0)


# ------------------------------------------------------------------ the page


def test_clusters_redirects_to_the_only_cluster(viewer_client, passive):
    response = viewer_client.get(reverse("console:clusters"))
    assert response.status_code == 302
    assert response["Location"] == reverse("console:cluster", args=[passive["cluster"].pk])


def test_clusters_lists_them_when_there_are_several(viewer_client, passive):
    other = Cluster.objects.create(name="act", mode="active")
    add_member(other, "m1", "active")
    html = viewer_client.get(reverse("console:clusters")).content.decode()
    assert f'href="{reverse("console:cluster", args=[other.pk])}"' in html
    assert f'href="{reverse("console:cluster", args=[passive["cluster"].pk])}"' in html


def test_an_unknown_cluster_is_404(viewer_client, passive):
    assert viewer_client.get(reverse("console:cluster", args=[999999])).status_code == 404


def test_anonymous_visitors_go_to_log_in_and_others_get_403(nobody_client, passive):
    url = reverse("console:cluster", args=[passive["cluster"].pk])
    assert Client().get(url).status_code == 302
    assert nobody_client.get(url).status_code == 403


def test_every_member_is_a_row_with_its_state_in_words(viewer_client, passive):
    html = page(viewer_client, passive["cluster"])
    for key, state in (("primary", "active"), ("backup", "standby"), ("dead", "dead"),
                       ("stopped", "stopped")):
        r = row(html, passive[key])
        assert f'data-state="{state}"' in r
        assert f'<span class="badge state-{state}">{state}</span>' in r
        assert "heartbeat-age" in r
    primary = row(html, passive["primary"])
    for text in ("host-p", "10.0.0.1", "4242", "0.1.0", "primary", "0 / 8"):
        assert text in primary
    dead = row(html, passive["dead"])
    assert "no heartbeat for 5 s" in dead and "declared dead by p" in dead
    # Live members first, the ended ones after them.
    assert html.index(f'id="member-{passive["backup"].pk}"') < html.index(
        f'id="member-{passive["dead"].pk}"')


def test_old_ended_members_are_left_out_and_the_filter_hides_recent_ones(viewer_client,
                                                                          passive):
    Member.objects.filter(pk=passive["stopped"].pk).update(
        heartbeat_at=timezone.now() - timedelta(days=3))
    html = page(viewer_client, passive["cluster"])
    assert f'id="member-{passive["stopped"].pk}"' not in html
    assert f'id="member-{passive["dead"].pk}"' in html
    assert 'class="members-area"' in html
    html = page(viewer_client, passive["cluster"], "?members=live")
    assert 'class="members-area only-live"' in html
    assert re.search(rf'<tr id="member-{passive["dead"].pk}"[^>]*data-ended', html)


def test_the_heartbeat_age_is_judged_by_the_members_own_timings(viewer_client, passive):
    cluster = passive["cluster"]
    Member.objects.filter(cluster=cluster).update(
        heartbeat_at=F("heartbeat_at") - timedelta(seconds=3))
    Member.objects.filter(pk=passive["backup"].pk).update(dead_after=2.0, heartbeat_interval=0.5)
    html = page(viewer_client, cluster)
    primary, backup = row(html, passive["primary"]), row(html, passive["backup"])
    assert re.search(r'class="heartbeat-age age-late"[^>]*data-late="2.5" data-dead="5"', primary)
    assert re.search(r'class="heartbeat-age age-dead"[^>]*data-late="1" data-dead="2"', backup)
    assert "data-db-now=" in primary and "data-age-since=" in primary


def test_the_lease_box_names_the_holder_and_its_epoch(viewer_client, passive):
    html = page(viewer_client, passive["cluster"])
    assert '<span id="lease-holder">p</span>' in html
    assert "passive (fail-over)" in html
    assert re.search(r"Lease epoch</dt><dd[^>]*>7<", html)
    Cluster.objects.filter(pk=passive["cluster"].pk).update(lease_holder=None,
                                                           handover_to=passive["backup"])
    html = page(viewer_client, passive["cluster"])
    assert '<span id="lease-holder">none</span>' in html
    assert "b1 <span" in html  # the handover target


def test_user_text_is_escaped(viewer_client, passive):
    Member.objects.filter(pk=passive["primary"].pk).update(labels=["<script>alert(1)</script>"],
                                                           stop_reason="<img src=x>")
    Cluster.objects.filter(pk=passive["cluster"].pk).update(description="<b>bold</b>")
    Event.record(passive["cluster"].pk, Event.Kind.SWITCHOVER_REQUESTED,
                 message="<script>evil()</script>", actor="<i>x</i>")
    html = page(viewer_client, passive["cluster"])
    assert "<script>alert" not in html and "<script>evil" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;evil()&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "<i>x</i>" not in html
    pushed = render_cluster(passive["cluster"].pk, [live.Viewer(False, False)])[0]
    assert "<script>" not in pushed


def test_the_timeline_is_newest_first_and_paged(viewer_client, passive):
    cluster = passive["cluster"]
    for i in range(30):
        Event.record(cluster.pk, Event.Kind.MEMBER_JOINED, message=f"event number {i:02d}",
                     actor="p")
    html = page(viewer_client, cluster)
    assert html.index("event number 29") < html.index("event number 28")
    assert "event number 04" not in html  # 25 a page: 29 .. 05
    older = re.search(r'href="\?after=([^"#]+)#timeline-section"', html)
    assert older
    html2 = page(viewer_client, cluster, f"?after={older.group(1)}")
    assert "event number 04" in html2 and "event number 29" not in html2
    assert '<div id="timeline-head" hidden></div>' in html2
    assert 'rel="prev"' in html2
    # A cursor that does not parse is the first page, not an error.
    assert "event number 29" in page(viewer_client, cluster, "?after=garbage")


def test_the_timeline_shows_operator_actions_with_actor_source_and_reason(operator_client,
                                                                         passive):
    operator_client.post(reverse("console:switchover", args=[passive["cluster"].pk]),
                         {"target": passive["backup"].pk, "reason": "patching host-p"})
    html = page(operator_client, passive["cluster"])
    timeline = html[html.index('id="timeline-head"'):]
    assert "switchover.requested" in timeline
    assert "otto" in timeline and "Console" in timeline and "patching host-p" in timeline


# ------------------------------------------------------------------ switch-over


def switch(client, cluster, **data):
    return client.post(reverse("console:switchover", args=[cluster.pk]), data)


def test_an_operator_switches_over_with_a_reason(operator_client, passive):
    cluster = passive["cluster"]
    response = switch(operator_client, cluster, target=passive["backup"].pk,
                      reason="maintenance of host-p")
    assert response.status_code == 302
    cluster.refresh_from_db()
    assert cluster.handover_to_id == passive["backup"].pk
    event = Event.objects.get(kind=Event.Kind.SWITCHOVER_REQUESTED)
    assert (event.actor, event.source, event.reason) == ("otto", "console",
                                                         "maintenance of host-p")
    assert "Switch-over to b1 requested" in operator_client.get(response["Location"]) \
        .content.decode()


def test_a_switch_over_to_the_primary_is_the_default_target(operator_client, passive):
    cluster = passive["cluster"]
    Member.objects.filter(pk=passive["primary"].pk).update(state="standby")
    Member.objects.filter(pk=passive["backup"].pk).update(state="active")
    assert switch(operator_client, cluster, target="", reason="back home").status_code == 302
    cluster.refresh_from_db()
    assert cluster.handover_to_id == passive["primary"].pk


def test_a_viewer_sees_the_control_disabled_saying_why(viewer_client, passive):
    html = page(viewer_client, passive["cluster"])
    form = html[html.index('id="switchover"'):html.index('id="members-heading"')]
    assert f'disabled title="{NOT_SWITCHER}"' in form
    assert re.search(r'<button type="submit" class="primary" disabled', form)


def test_an_operator_sees_the_control_enabled(operator_client, passive):
    html = page(operator_client, passive["cluster"])
    form = html[html.index('id="switchover"'):html.index('id="members-heading"')]
    assert "disabled" not in form
    assert '<label for="switchover-target">' in form and '<label for="switchover-reason">' in form


def test_a_forged_post_by_a_viewer_is_403_and_changes_nothing(viewer_client, passive):
    response = switch(viewer_client, passive["cluster"], target=passive["backup"].pk,
                      reason="I am not allowed")
    assert response.status_code == 403
    passive["cluster"].refresh_from_db()
    assert passive["cluster"].handover_to_id is None
    assert not Event.objects.filter(kind=Event.Kind.SWITCHOVER_REQUESTED).exists()


def test_a_switch_over_needs_the_csrf_token(passive):
    client = Client(enforce_csrf_checks=True)
    client.force_login(console_user("olga", "operator"))
    response = switch(client, passive["cluster"], target=passive["backup"].pk, reason="r")
    assert response.status_code == 403
    passive["cluster"].refresh_from_db()
    assert passive["cluster"].handover_to_id is None


def test_a_switch_over_is_a_post(operator_client, passive):
    url = reverse("console:switchover", args=[passive["cluster"].pk])
    assert operator_client.get(url).status_code == 405


@pytest.mark.parametrize("case", ["no reason", "blank reason", "unknown member", "not a number",
                                  "dead member", "active member", "other cluster's member",
                                  "too long", "NUL in the reason"])
def test_bad_switch_over_input_says_what_is_wrong_and_changes_nothing(operator_client, passive,
                                                                      case):
    other = Cluster.objects.create(name="other", mode="passive")
    stranger = add_member(other, "s", "standby")
    data = {"target": passive["backup"].pk, "reason": "a reason"}
    expected = {
        "no reason": "Give a reason", "blank reason": "Give a reason",
        "unknown member": "no such member", "not a number": "no such member",
        "dead member": "b2 is dead", "active member": "p is active",
        "other cluster's member": "no such member", "too long": "too long",
        "NUL in the reason": "NUL character",
    }[case]
    if case == "no reason":
        del data["reason"]
    elif case == "blank reason":
        data["reason"] = "   "
    elif case == "unknown member":
        data["target"] = 999999
    elif case == "not a number":
        data["target"] = "b1'; drop table"
    elif case == "dead member":
        data["target"] = passive["dead"].pk
    elif case == "active member":
        data["target"] = passive["primary"].pk
    elif case == "other cluster's member":
        data["target"] = stranger.pk
    elif case == "too long":
        data["reason"] = "x" * 501
    elif case == "NUL in the reason":
        data["reason"] = "maintenance\x00"
    response = switch(operator_client, passive["cluster"], **data)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html and expected in html
    passive["cluster"].refresh_from_db()
    assert passive["cluster"].handover_to_id is None
    assert not Event.objects.filter(kind=Event.Kind.SWITCHOVER_REQUESTED).exists()


def test_an_active_cluster_cannot_be_switched_over(operator_client):
    cluster = Cluster.objects.create(name="act", mode="active")
    m1 = add_member(cluster, "m1", "active")
    add_member(cluster, "m2", "active")
    html = page(operator_client, cluster)
    assert "Switch-over applies to passive" in html
    response = switch(operator_client, cluster, target=m1.pk, reason="why not")
    assert response.status_code == 400
    assert "not a passive" in response.content.decode()
    assert not Event.objects.filter(kind=Event.Kind.SWITCHOVER_REQUESTED).exists()


def test_a_passive_cluster_without_a_live_primary_refuses_the_default_target(operator_client,
                                                                             passive):
    # The primary is the active member: it is no standby to hand over to.
    response = switch(operator_client, passive["cluster"], target="", reason="r")
    assert response.status_code == 400
    assert "Switch-over refused" in response.content.decode()
    passive["cluster"].refresh_from_db()
    assert passive["cluster"].handover_to_id is None


# ------------------------------------------------------------------ live and speed


def test_the_renderers_are_registered_when_the_urls_load():
    assert live.RENDERERS["cluster"].takes_id and not live.RENDERERS["dashboard"].takes_id
    assert live.parse_topics("cluster:3,dashboard") == [("cluster", 3), ("dashboard", None)]


def test_the_pushed_fragments_carry_the_pages_ids(passive):
    html = render_cluster(passive["cluster"].pk, [live.Viewer(False, False)])[0]
    top_level = re.findall(r'^<(\w+) id="([\w-]+)"[^>]*hx-swap-oob="(\w+)"', html, re.M)
    assert [(tag, i) for tag, i, _ in top_level] == [("div", "members"), ("section", "lease"),
                                                     ("div", "timeline-head")]
    assert dict((i, how) for _, i, how in top_level)["timeline-head"] == "innerHTML"
    for key in ("primary", "backup", "dead", "stopped"):
        assert f'<tr id="member-{passive[key].pk}" data-state=' in html
    assert '<span id="lease-holder">p</span>' in html
    assert "csrfmiddlewaretoken" not in html


def test_a_push_renders_what_a_reload_shows(viewer_client, passive):
    pushed = render_cluster(passive["cluster"].pk, [live.Viewer(False, False)])[0]
    html = page(viewer_client, passive["cluster"])
    strip = re.compile(r'data-db-now="[^"]*"|>[0-9.]+ s<| hx-swap-oob="\w+"')

    def members(text):
        start = text.index('<div id="members"')
        return strip.sub("", text[start:text.index("</table>", start)])

    assert members(pushed) == members(html)


def test_a_push_for_a_cluster_that_is_gone_is_empty(passive):
    assert render_cluster(999999, [live.Viewer(True, True)]) == [""]


def _count_queries(client, cluster) -> int:
    client.get(reverse("console:cluster", args=[cluster.pk]))  # warm the user's caches
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("console:cluster", args=[cluster.pk]))
    assert response.status_code == 200
    return len(queries)


def test_the_query_count_does_not_grow_with_the_members(passive):
    client = client_for(console_user("olga", "operator"))
    cluster = passive["cluster"]
    few = _count_queries(client, cluster)
    for i in range(60):
        member = add_member(cluster, f"n{i}", "standby" if i % 2 else "dead", labels=["x"])
        Event.record(cluster.pk, Event.Kind.MEMBER_JOINED, member=member, message=f"joined {i}")
    assert _count_queries(client, cluster) == few
    assert few <= 10


def test_a_member_writes_its_own_timings_when_it_joins(db):
    from scheduler.membership import MemberOptions, register

    member = register(MemberOptions(cluster="timed", name="n1", mode="single"), 7.5, 1.5)
    assert (member.heartbeat_interval, member.dead_after) == (1.5, 7.5)
