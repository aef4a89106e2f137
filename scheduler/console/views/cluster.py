"""The cluster tab: every member, the lease, switch-over, the cluster's event timeline.

The page, its htmx partials and the live pushes of topic `cluster:<pk>` all render from
`cluster_context()`: a fixed handful of queries whatever the number of members (the cluster
with its lease holder and handover target, its members, the database's clock, one page of
events).
"""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST

from scheduler.clock import db_now
from scheduler.console import live
from scheduler.console.access import can_switchover, console_actor, console_view, display_zone
from scheduler.console.forms import SwitchoverForm
from scheduler.console.paging import keyset_page, page_size
from scheduler.membership import MemberRefused, request_switchover
from scheduler.models import Cluster, Event, Member

# Stopped and dead members are listed for this long after their last heartbeat.
RECENT = timedelta(hours=24)
TIMELINE_SIZE = 25
# Live states first, then the ended ones; each by name.
STATE_ORDER = {"active": 0, "standby": 1, "stopping": 2, "stopped": 3, "dead": 4}


NONE = mark_safe('<span class="none">–</span>')  # noqa: S308 (a constant)


def time_html(value, zone: ZoneInfo) -> SafeString:
    """What partials/time.html renders, made in Python: a hundred rows of times are a good
    part of the tab's render time when each is a template include."""
    if value is None:
        return NONE
    utc = value.astimezone(UTC)
    return format_html('<time datetime="{}" title="{} UTC">{}</time>', utc.isoformat(),
                       utc.strftime("%Y-%m-%d %H:%M:%S.%f"),
                       value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"))


def member_rows(members: list[Member], now, zone: ZoneInfo = UTC) -> list[dict]:
    """What the table shows of each member, with its heartbeat's age judged by its own
    timings: late past half of its dead_after, dead past it (live and dead members; a
    stopped member's last heartbeat is just a time)."""
    rows = []
    for m in sorted(members, key=lambda m: (STATE_ORDER.get(m.state, 9), m.name, -m.pk)):
        age = max((now - m.heartbeat_at).total_seconds(), 0.0)
        late, dead = m.dead_after / 2, m.dead_after
        if m.state == Member.State.STOPPED:
            age_class = ""
        elif age >= dead:
            age_class = "age-dead"
        elif age >= late:
            age_class = "age-late"
        else:
            age_class = "age-ok"
        rows.append({"m": m, "age": f"{age:.1f}", "age_class": age_class,
                     "late": f"{late:g}", "dead": f"{dead:g}",
                     "interval": f"{m.heartbeat_interval:g}",
                     "heartbeat_iso": m.heartbeat_at.astimezone(UTC).isoformat(),
                     "heartbeat": (time_html(m.heartbeat_at, zone)
                                   if m.state == Member.State.STOPPED else None),
                     "started": time_html(m.started_at, zone),
                     "stopped": time_html(m.stopped_at, zone) if m.stopped_at else None,
                     "labels": ", ".join(str(label) for label in (m.labels or []))})
    return rows


def cluster_context(cluster: Cluster, *, after: str | None = None, before: str | None = None,
                    size: int = TIMELINE_SIZE, zone: ZoneInfo = UTC) -> dict:
    now = db_now()
    members = list(
        Member.objects.filter(cluster=cluster)
        .filter(Q(state__in=Member.LIVE_STATES) | Q(heartbeat_at__gte=now - RECENT))
    )
    rows = member_rows(members, now, zone)
    events = keyset_page(Event.objects.filter(cluster=cluster), descending=True,
                         after=after, before=before, size=size)
    for event in events.rows:
        event.when = time_html(event.created_at, zone)
    standbys = [r["m"] for r in rows if r["m"].state == Member.State.STANDBY]
    return {
        "cluster": cluster,
        "rows": rows,
        "live_count": sum(1 for r in rows if r["m"].is_live),
        "ended_count": sum(1 for r in rows if not r["m"].is_live),
        "db_now": now,
        "db_now_iso": now.astimezone(UTC).isoformat(),
        "events": events,
        "first_page": after is None and before is None,
        "standbys": standbys,
        "is_passive": cluster.mode == Cluster.Mode.PASSIVE,
        "recent_hours": int(RECENT.total_seconds() // 3600),
    }


def _cluster(cluster_id: int) -> Cluster:
    return get_object_or_404(Cluster.objects.select_related("lease_holder", "handover_to"),
                             pk=cluster_id)


@console_view
@require_GET
def clusters(request):
    """Every cluster; with exactly one, straight to its tab."""
    all_clusters = list(Cluster.objects.order_by("name"))
    if len(all_clusters) == 1:
        return redirect("console:cluster", cluster_id=all_clusters[0].pk)
    live_counts: dict[int, int] = {}
    for cluster_id in Member.objects.filter(state__in=Member.LIVE_STATES).values_list(
            "cluster_id", flat=True):
        live_counts[cluster_id] = live_counts.get(cluster_id, 0) + 1
    items = [{"c": c, "live": live_counts.get(c.pk, 0)} for c in all_clusters]
    return render(request, "console/clusters.html", {"items": items, "nav": "cluster"})


def _page(request, cluster: Cluster, *, status: int = 200, form: dict | None = None):
    context = cluster_context(cluster, after=request.GET.get("after"),
                              before=request.GET.get("before"),
                              size=page_size(request.GET.get("size") or str(TIMELINE_SIZE))
                              if request.GET.get("size") else TIMELINE_SIZE,
                              zone=display_zone(request.user))
    only_live = request.GET.get("members") == "live"
    context.update({"nav": "cluster", "only_live": only_live,
                    "form": form or {"target": "", "reason": "", "error": ""}})
    template = "console/cluster.html"
    if getattr(request, "htmx", False) and not request.htmx.boosted and status == 200:
        part = request.GET.get("part")
        if part in ("members", "lease", "timeline"):
            template = f"console/cluster.html#{part}"
    return render(request, template, context, status=status)


@console_view
@require_GET
def cluster(request, cluster_id: int):
    return _page(request, _cluster(cluster_id))


@console_view
@require_POST
def switchover(request, cluster_id: int):
    """An operator's switch-over of a passive cluster to a standby member, with a reason.
    Bad input is answered with the page, the message at the form, and changes nothing."""
    if not can_switchover(request.user):
        raise PermissionDenied("Switching over needs the operator role.")
    cluster = _cluster(cluster_id)
    posted = SwitchoverForm(request.POST)
    valid = posted.is_valid()
    raw_target = posted.cleaned_data.get("target", "")
    reason = posted.cleaned_data.get("reason", "")
    # What the form shows again: only text that can be shown (not a NUL, not 10 MB).
    form = {"target": raw_target, "reason": reason, "error": ""}
    target_name: str | None = None
    if cluster.mode != Cluster.Mode.PASSIVE:
        form["error"] = (f"Cluster {cluster.name} is not a passive (fail-over) cluster: "
                         "there is nothing to switch over.")
    elif not valid:
        form["error"] = " ".join(posted.problems())
    elif raw_target:
        try:
            target_pk = int(raw_target)
        except ValueError:
            target_pk = None
        target = (Member.objects.filter(cluster=cluster, pk=target_pk).first()
                  if target_pk is not None else None)
        if target is None:
            form["error"] = "There is no such member in this cluster."
        elif target.state != Member.State.STANDBY:
            form["error"] = (f"Member {target.name} is {target.state}: only a standby member "
                             "can take over.")
        else:
            target_name = target.name
    if not form["error"]:
        try:
            chosen = request_switchover(cluster.name, target_name,
                                        console_actor(request, reason))
        except MemberRefused as exc:
            form["error"] = f"Switch-over refused: {exc}."
        else:
            messages.success(request, f"Switch-over to {chosen.name} requested: the active "
                                      "member hands the lease over at its next heartbeat.")
            return redirect(reverse("console:cluster", args=[cluster.pk]), status=303)
    return _page(request, cluster, status=400, form=form)


@live.renderer("cluster", takes_id=True,
               tables=("scheduler_member", "scheduler_cluster", "scheduler_event"))
def render_cluster(topic_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """The pushed fragments of topic cluster:<pk>: the members table, the lease box and the
    head of the timeline, from the page's own partials (no form: the switch-over form stays
    as the page rendered it, with its CSRF token)."""
    cluster = Cluster.objects.select_related("lease_holder", "handover_to").filter(
        pk=topic_id).first()
    if cluster is None:
        return [""] * len(viewers)
    return live.render_parts("console/cluster.html", ("members", "lease", "timeline"),
                             cluster_context(cluster), viewers)
