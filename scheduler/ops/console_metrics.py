"""The console's /metrics: the cluster's state read from the database at scrape time.

A custom collector (nothing is kept between scrapes; every console process answers the
same): four grouped queries, each bounded by the number of clusters, member states, jobs and
task states, not by the history's length:

- members by cluster and state (every member row kept, stopped and dead ones included);
- unfinished (queued, running) tasks by cluster, from the partial indexes on those states;
- tasks created in the last RECENT_MINUTES, by cluster, job and current state (the index
  task_created bounds the scan to that window, not the retained history);
- the lease epoch per cluster (passive clusters; grows by one at each take-over).
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from scheduler.clock import db_now
from scheduler.models import Cluster, Member, Task

RECENT_MINUTES = 60


class DatabaseCollector:
    def describe(self):
        return []  # nothing to describe up front: no queries when the registry is made

    def collect(self):
        members = GaugeMetricFamily("opscenter_members", "Members by cluster and state.",
                                    labels=["cluster", "state"])
        for row in (Member.objects.values("cluster__name", "state")
                    .annotate(n=Count("id")).order_by()):
            members.add_metric([row["cluster__name"], row["state"]], row["n"])
        yield members

        unfinished = GaugeMetricFamily("opscenter_tasks_unfinished",
                                       "Queued and running tasks by cluster and state.",
                                       labels=["cluster", "state"])
        for row in (Task.objects.filter(state__in=Task.UNFINISHED_STATES)
                    .values("cluster__name", "state").annotate(n=Count("id")).order_by()):
            unfinished.add_metric([row["cluster__name"], row["state"]], row["n"])
        yield unfinished

        recent = GaugeMetricFamily(
            "opscenter_tasks_recent",
            f"Tasks created in the last {RECENT_MINUTES} minutes, by cluster, job and state.",
            labels=["cluster", "job", "state"])
        since = db_now() - timedelta(minutes=RECENT_MINUTES)
        for row in (Task.objects.filter(created_at__gte=since)
                    .values("cluster__name", "job__name", "state").annotate(n=Count("id"))
                    .order_by()):
            recent.add_metric([row["cluster__name"], row["job__name"], row["state"]], row["n"])
        yield recent

        epoch = GaugeMetricFamily("opscenter_lease_epoch",
                                  "The lease epoch of each cluster (passive clusters).",
                                  labels=["cluster"])
        for name, value in Cluster.objects.values_list("name", "lease_epoch"):
            epoch.add_metric([name], value)
        yield epoch


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())
