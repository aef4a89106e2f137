"""The dashboard: the health of every cluster at a glance.

Per cluster a card (mode, members by state, lease holder, members late or dead, running
tasks, failures of the last hour and day, fires per minute over the last hour), then the
longest-running tasks and the latest events of the whole install. A fixed number of grouped
queries whatever the number of clusters, members and tasks; the page and the pushes of topic
`dashboard` render from `dashboard_context()`.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.shortcuts import render
from django.views.decorators.http import require_GET

from scheduler.clock import db_now
from scheduler.console import live
from scheduler.console.access import console_view, display_zone
from scheduler.console.views.cluster import time_html
from scheduler.models import Cluster, Event, Member, Task

FAILED_STATES = ("failed", "timed_out", "lost")
CHART_MINUTES = 60
RUNNING_SHOWN = 5
EVENTS_SHOWN = 10
# Stopped and dead members count on a card for this long after their last heartbeat.
RECENT = timedelta(hours=24)
# The chart's geometry (SVG user units).
BAR_W, CHART_H = 5, 50
# A fire's task is created when it is due (created_at >= scheduled_for, give or take the
# members' clock skew): the chart's query reads the tasks created since its first minute less
# this, by the index task_created.
CREATED_SLACK = timedelta(minutes=1)
# A minute this long past its end gets no more fires: its counts are cached in the process.
SETTLED_AFTER = timedelta(seconds=15)


class FiresCache:
    """Fires per (cluster, minute) of the chart's settled minutes, kept in the process: a
    render queries only the minutes not cached yet (the current one, and the one before for
    SETTLED_AFTER), not the last hour's tasks (3.6 M rows at 1,000 fires/s) on every render.
    Filled once per minute; minutes that leave the chart are dropped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[tuple[int, datetime], int] = {}
        self.minutes: set[datetime] = set()  # the minutes cached (for every cluster)

    def clear(self) -> None:
        with self.lock:
            self.counts.clear()
            self.minutes.clear()

    def fires(self, now: datetime, start: datetime) -> dict[int, dict[datetime, int]]:
        minutes = [start + timedelta(minutes=i) for i in range(CHART_MINUTES)]
        with self.lock:
            self.minutes = {m for m in self.minutes if m >= start}
            self.counts = {k: n for k, n in self.counts.items() if k[1] >= start}
            missing = [m for m in minutes if m not in self.minutes]
            out: dict[int, dict[datetime, int]] = {}
            for (cluster_id, minute), n in self.counts.items():
                out.setdefault(cluster_id, {})[minute] = n
        first = missing[0]  # never none: the current minute is never settled
        fresh: dict[tuple[int, datetime], int] = {}
        for row in (Task.objects.filter(created_at__gte=first - CREATED_SLACK,
                                        scheduled_for__gte=first, attempt=1)
                    .annotate(minute=TruncMinute("scheduled_for", tzinfo=UTC))
                    .values("cluster_id", "minute").annotate(n=Count("id"))):
            minute = row["minute"].astimezone(UTC).replace(second=0, microsecond=0)
            fresh[(row["cluster_id"], minute)] = row["n"]
            out.setdefault(row["cluster_id"], {})[minute] = row["n"]
        settled = {m for m in missing if m + timedelta(minutes=1) + SETTLED_AFTER <= now}
        if settled:
            with self.lock:
                self.minutes |= settled
                self.counts.update({k: n for k, n in fresh.items() if k[1] in settled})
        return out


FIRES = FiresCache()


def _chart(counts: dict, start, zone) -> dict:
    """An inline SVG bar chart of fires per minute: bars, the largest value, the table rows."""
    minutes = [start + timedelta(minutes=i) for i in range(CHART_MINUTES)]
    values = [counts.get(m, 0) for m in minutes]
    peak = max(values) or 1
    bars = []
    for i, (minute, value) in enumerate(zip(minutes, values, strict=True)):
        height = round(CHART_H * value / peak, 1) if value else 0
        bars.append({"x": i * BAR_W, "y": f"{CHART_H - height:g}", "h": f"{height:g}",
                     "minute": time_html(minute, zone), "value": value})
    return {"bars": bars, "peak": max(values), "total": sum(values),
            "width": CHART_MINUTES * BAR_W, "height": CHART_H,
            "last": values[-1] if values else 0}


def dashboard_context(zone=UTC) -> dict:
    now = db_now()
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    clusters = list(Cluster.objects.select_related("lease_holder").order_by("name"))

    # Members: live ones and those ended recently (one query), judged by their own timings.
    members_by_cluster: dict[int, list] = {c.pk: [] for c in clusters}
    for m in Member.objects.filter(Q(state__in=Member.LIVE_STATES)
                                   | Q(heartbeat_at__gte=now - RECENT)).order_by("name"):
        age = max((now - m.heartbeat_at).total_seconds(), 0.0)
        m.age = age
        m.late = m.is_live and age >= m.dead_after / 2
        m.overdue = m.is_live and age >= m.dead_after
        members_by_cluster.setdefault(m.cluster_id, []).append(m)

    # Running tasks per cluster (the partial index task_member_running is on member; the
    # running rows are few, so a scan of them is cheap).
    running = dict(Task.objects.filter(state=Task.State.RUNNING).values("cluster_id")
                   .annotate(n=Count("id")).values_list("cluster_id", "n"))
    longest = list(Task.objects.filter(state=Task.State.RUNNING, started_at__isnull=False)
                   .select_related("job", "member").order_by("started_at")[:RUNNING_SHOWN])
    for task in longest:
        task.running_for = max((now - task.started_at).total_seconds(), 0.0)

    # Failures of the last day and hour, per cluster and state (index task_failures).
    failures: dict[int, dict] = {}
    for row in (Task.objects.filter(state__in=FAILED_STATES, finished_at__gte=day_ago)
                .values("cluster_id", "state")
                .annotate(day=Count("id"), hour=Count("id", filter=Q(finished_at__gte=hour_ago)))):
        failures.setdefault(row["cluster_id"], {})[row["state"]] = (row["hour"], row["day"])

    # Fires per minute over the last hour, per cluster: the settled minutes from the
    # process's cache, the others (normally the current one) with one grouped query.
    start = (now - timedelta(minutes=CHART_MINUTES - 1)).astimezone(UTC).replace(
        second=0, microsecond=0)
    fires = FIRES.fires(now, start)

    cards = []
    for c in clusters:
        members = members_by_cluster.get(c.pk, [])
        by_state: dict[str, int] = {}
        for m in members:
            by_state[m.state] = by_state.get(m.state, 0) + 1
        live_members = [m for m in members if m.is_live]
        late = [m for m in live_members if m.late and not m.overdue]
        overdue = [m for m in live_members if m.overdue]
        dead = [m for m in members if m.state == Member.State.DEAD]
        fail = failures.get(c.pk, {})
        fail_rows = [{"state": s, "label": Task.State(s).label, "hour": fail.get(s, (0, 0))[0],
                      "day": fail.get(s, (0, 0))[1]} for s in FAILED_STATES]
        if not live_members:
            health, level = "no live member", "bad"
        elif overdue or (c.mode == Cluster.Mode.PASSIVE
                         and not any(m.state == Member.State.ACTIVE for m in live_members)):
            health, level = ("no active member" if not overdue else
                             f"{len(overdue)} member(s) without heartbeat past dead-after"), "bad"
        elif late or dead:
            health, level = ("heartbeat late" if late else "a member died recently"), "warn"
        else:
            health, level = "healthy", "ok"
        cards.append({
            "c": c, "members": members, "live": len(live_members), "total": len(members),
            "states": sorted(by_state.items(), key=lambda kv: Member.State.values.index(kv[0])
                             if kv[0] in Member.State.values else 9),
            "late": late, "overdue": overdue, "dead": dead,
            "running": running.get(c.pk, 0), "failures": fail_rows,
            "failed_hour": sum(r["hour"] for r in fail_rows),
            "chart": _chart(fires.get(c.pk, {}), start, zone),
            "health": health, "level": level,
        })

    events = list(Event.objects.select_related("cluster").order_by("-id")[:EVENTS_SHOWN])
    for event in events:
        event.when = time_html(event.created_at, zone)
    return {"cards": cards, "longest": longest, "running_total": sum(running.values()),
            "events": events, "db_now": now, "chart_minutes": CHART_MINUTES}


@console_view
@require_GET
def dashboard(request):
    context = {**dashboard_context(display_zone(request.user)), "nav": "dashboard"}
    template = "console/dashboard.html"
    if getattr(request, "htmx", False) and not request.htmx.boosted:
        part = request.GET.get("part")
        if part in ("cards", "running", "events"):
            template = f"console/dashboard.html#{part}"
    return render(request, template, context)


@live.renderer("dashboard", takes_id=False, min_interval=2.0,
               tables=("scheduler_member", "scheduler_cluster", "scheduler_task",
                       "scheduler_event"))
def render_dashboard(topic_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """The pushed fragments of topic `dashboard`: the cards, running tasks, recent events.
    At most one render every 2 s: it is the install's busiest page and its costliest render."""
    return live.render_parts("console/dashboard.html", ("cards", "running", "events"),
                             dashboard_context(), viewers)
