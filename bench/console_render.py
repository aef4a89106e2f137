"""Server time of the console's cluster tab with 100 members (target < 50 ms), its live push
and the dashboard.

    .venv/bin/python bench/console_render.py [--members 100] [--events 2000] [--runs 200]
        [--json out.json]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsc_bench \
        .venv/bin/python bench/console_render.py

Uses a fresh test database of the configured database (DATABASE_URL, else the embedded
SQLite): `test_<name>` made and migrated like the test suite's, dropped at the end. It holds
one passive cluster with `--members` members (half live, the rest stopped or dead in the
last day, each with labels), `--events` events, a few hundred tasks (running, failed, and one
an hour's worth of fires for the chart). Each page is fetched `--runs` times through Django's
test client as an operator (the whole request: middleware, session, permissions, queries,
template), after 10 warm-up fetches; the push is `render_cluster()` called directly.
Prints the figures as JSON, then a table: p50, p95, max in ms and the queries of one request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")

WARMUP = 10


def load(members: int, events: int) -> int:
    from django.utils import timezone

    from scheduler.models import Cluster, Event, Job, Member, Task

    now = timezone.now()
    cluster = Cluster.objects.create(name="bench", mode="passive", lease_epoch=12)
    rows = []
    for i in range(members):
        live = i < members // 2
        state = ("active" if i == 0 else "standby") if live else ("dead" if i % 3 else "stopped")
        rows.append(Member(
            cluster=cluster, name=f"node-{i:03d}", mode="passive",
            role="primary" if i == 0 else "backup", backup_precedence=i, host=f"host-{i:03d}",
            ip=f"10.0.{i // 250}.{i % 250}", pid=1000 + i, version="0.1.0", state=state,
            labels=["rack-a", f"zone-{i % 3}"], workers=100, running_tasks=i % 7,
            heartbeat_at=now - timedelta(seconds=i % 4), clock_skew_ms=i % 11 - 5,
            stopped_at=None if live else now - timedelta(minutes=i),
            stop_reason="" if live else "no heartbeat for 5 s",
            declared_dead_by="" if live or i % 3 == 0 else "node-000"))
    Member.objects.bulk_create(rows)
    first = Member.objects.get(cluster=cluster, name="node-000")
    Cluster.objects.filter(pk=cluster.pk).update(lease_holder=first,
                                                 lease_expires_at=now + timedelta(seconds=5))
    Event.objects.bulk_create([
        Event(cluster=cluster, kind="member.joined", actor=f"node-{i % members:03d}",
              source="node", message=f"member node-{i % members:03d} joined (passive, backup)")
        for i in range(events)])
    job = Job.objects.create(cluster=cluster, name="nightly", kind="shell", command="true")
    tasks = []
    for i in range(600):  # ten fires a minute for an hour
        at = now - timedelta(seconds=6 * i)
        tasks.append(Task(cluster=cluster, job=job, scheduled_for=at, trigger="manual",
                          state="succeeded" if i % 20 else "failed", started_at=at,
                          finished_at=at + timedelta(seconds=1)))
    for i in range(20):
        tasks.append(Task(cluster=cluster, job=job, scheduled_for=now, trigger="manual",
                          state="running", started_at=now - timedelta(seconds=i), member=first))
    Task.objects.bulk_create(tasks)
    return cluster.pk


def timed(fn, runs: int) -> dict:
    for _ in range(WARMUP):
        fn()
    times, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    times.sort()
    cpu.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "max_ms": round(times[-1], 2),
            # This process's CPU time (not the database server's): what the figure is made
            # of when other work shares the machine's cores.
            "cpu_p50_ms": round(statistics.median(cpu), 2),
            "cpu_p95_ms": round(cpu[int(0.95 * (len(cpu) - 1))], 2), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from scheduler.console import live
    from scheduler.console.views.cluster import render_cluster

    # Not setup_test_environment(): its instrumented template rendering is not what a
    # server runs. The test client's host is allowed instead.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        cluster_id = load(args.members, args.events)
        user = User.objects.create_user("bench-operator")
        user.groups.add(Group.objects.get(name="operator"))
        client = Client()
        client.force_login(user)
        url = reverse("console:cluster", args=[cluster_id])
        dashboard_url = reverse("console:dashboard")

        def fetch(path):
            def get():
                response = client.get(path)
                assert response.status_code == 200, response.status_code
            return get

        def queries(path) -> int:
            with CaptureQueriesContext(connection) as captured:
                client.get(path)
            return len(captured)

        viewer = live.Viewer(may_operate=True, may_switchover=True)
        figures = {
            "database": connection.vendor, "debug": settings.DEBUG,
            "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "members": args.members, "events": args.events,
            "cluster_tab": {**timed(fetch(url), args.runs), "queries": queries(url)},
            "cluster_push": timed(lambda: render_cluster(cluster_id, viewer), args.runs),
            "dashboard": {**timed(fetch(dashboard_url), args.runs),
                          "queries": queries(dashboard_url)},
            "page_bytes": len(client.get(url).content),
        }
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"\n{figures['database']}, {args.members} members, {args.events} events, "
          f"{args.runs} runs each")
    print(f"load average {figures['load_average_1m']} on {figures['cpus']} cores")
    print(f"{'what':<14}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'cpu p50':>9}{'cpu p95':>9}"
          f"{'queries':>9}")
    for key in ("cluster_tab", "cluster_push", "dashboard"):
        f = figures[key]
        print(f"{key:<14}{f['p50_ms']:>9}{f['p95_ms']:>9}{f['max_ms']:>9}{f['cpu_p50_ms']:>9}"
              f"{f['cpu_p95_ms']:>9}{f.get('queries', ''):>9}")


if __name__ == "__main__":
    main()
