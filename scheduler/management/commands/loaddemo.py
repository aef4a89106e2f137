"""`manage.py loaddemo [--cluster NAME]`: load the demo clusters, their jobs and the job chain.

Two clusters, as `./run demo` starts them: demo-passive (fail-over: a primary and a backup
member; the job chain nightly-etl and its order) and demo-active (load balancing: two
members, each fire run once by one of them; and a job run by a Celery worker, one by
django.tasks' db_worker). `--cluster NAME` loads only that one; a name
that is neither loads demo-passive's jobs into a cluster of that name.

Idempotent: everything is found by name and brought back to the demo's definition; running it
again changes nothing that is already as defined (a stateful job keeps its data map, and an
order that has moved on stays where it is). Everything goes through model validation.
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import transaction

from scheduler.management.commands._common import OperatorCommand
from scheduler.models import (
    ChainNode,
    Cluster,
    Job,
    JobChain,
    Order,
    Schedule,
    check_chain_graph,
)

# A shell job that prints a line a second for 20 s: open its running task and watch the log.
FOLLOW_ME = ("follow-me",
             dict(title="Shell: a line a second for 20 s (open a running task: the log tails)",
                  kind="shell", timeout_seconds=60, overlap_policy="skip",
                  command='for i in $(seq 1 20); do echo "step $i of 20 at $(date +%T)"; '
                          'sleep 1; done; echo "all 20 steps done"'),
             dict(kind="interval", interval_seconds=30))

# name -> job fields, and the schedule (or None: a chain step runs only for orders).
JOBS: list[tuple[str, dict, dict | None]] = [
    ("heartbeat-report",
     dict(title="Minutely report (cron in Europe/Berlin)", kind="python",
          command="scheduler.demo_jobs:report", parameters={"timezone": "Europe/Berlin"}),
     dict(kind="cron", cron="* * * * *", timezone="Europe/Berlin")),
    ("sync-inventory",
     dict(title="Stateful: counts its runs in its data map", kind="python",
          command="scheduler.demo_jobs:sync_inventory", stateful=True,
          parameters={"items": 250}),
     dict(kind="interval", interval_seconds=15)),
    ("disk-usage",
     dict(title="Shell: disk usage of the working directory", kind="shell",
          command="df -h .", timeout_seconds=10),
     dict(kind="interval", interval_seconds=30)),
    ("flaky-import",
     dict(title="Fails about 3 times in 10; one retry after 5 s", kind="python",
          command="scheduler.demo_jobs:flaky_import", parameters={"failure_rate": 0.3},
          max_retries=1, retry_backoff_seconds=5.0),
     dict(kind="interval", interval_seconds=20)),
    ("slow-report",
     dict(title="Takes 3 s; a fire while it runs is skipped", kind="shell",
          command="sleep 3; echo done", timeout_seconds=60, overlap_policy="skip"),
     dict(kind="interval", interval_seconds=10)),
    ("etl-extract",
     dict(title="nightly-etl: extract", kind="python", command="scheduler.demo_jobs:extract",
          parameters={"source": "inventory.csv"}),
     None),
    ("etl-transform",
     dict(title="nightly-etl: transform", kind="python",
          command="scheduler.demo_jobs:transform"),
     None),
    ("etl-load",
     dict(title="nightly-etl: load", kind="python", command="scheduler.demo_jobs:load",
          parameters={"target": "warehouse"}),
     None),
    FOLLOW_ME,
]

# The active cluster: fires spread over both members (each job's tasks show who ran them).
ACTIVE_JOBS: list[tuple[str, dict, dict | None]] = [
    ("where-am-i",
     dict(title="Every 3 s: logs which member ran it (load balancing)", kind="python",
          command="scheduler.demo_jobs:where_am_i"),
     dict(kind="interval", interval_seconds=3)),
    ("sync-inventory",
     dict(title="Stateful: counts its runs in its data map, whichever member runs it",
          kind="python", command="scheduler.demo_jobs:sync_inventory", stateful=True,
          parameters={"items": 120}),
     dict(kind="interval", interval_seconds=15)),
    ("flaky-import",
     dict(title="Fails about 3 times in 10; one retry after 5 s", kind="python",
          command="scheduler.demo_jobs:flaky_import", parameters={"failure_rate": 0.3},
          max_retries=1, retry_backoff_seconds=5.0),
     dict(kind="interval", interval_seconds=20)),
    FOLLOW_ME,
    # Run elsewhere: `./run demo` starts a Celery worker on the queue "demo" (broker: files in
    # var/celery-broker) and django-tasks-db's `manage.py db_worker`.
    ("celery-hello",
     dict(title="Celery: a shell line run by the Celery worker (queue demo)", kind="shell",
          executor="celery", celery_queue="demo", timeout_seconds=60,
          command='echo "hello from the Celery worker, pid $PPID on $(hostname)"'),
     dict(kind="interval", interval_seconds=30)),
    ("django-task",
     dict(title="django.tasks: scheduler.demo_tasks.add, run by manage.py db_worker",
          kind="task", command="scheduler.demo_tasks.add", parameters={"a": 2, "b": 40},
          timeout_seconds=60),
     dict(kind="interval", interval_seconds=30)),
]

# The demo clusters: name -> (description, jobs, with the job chain).
DEMOS: dict[str, tuple[str, list, bool]] = {
    "demo-passive": ("Passive (fail-over) demo cluster: the primary runs everything, the backup "
                     "stands by; kill -9 the primary and the backup takes over.", JOBS, True),
    "demo-active": ("Active (load-balancing) demo cluster: both members fire, each fire runs "
                    "once on one of them.", ACTIVE_JOBS, False),
}

# Every field a demo job sets; the others are reset to their defaults on reload.
JOB_DEFAULTS = dict(title="", working_directory="", parameters={}, stateful=False,
                    timeout_seconds=None, max_retries=0, retry_backoff_seconds=10.0,
                    max_parallel=1, overlap_policy="queue", recover_lost=True, affinity="",
                    executor="node", celery_queue="", paused=False)

SCHEDULE_DEFAULTS = dict(title="demo", cron="", timezone="UTC", interval_seconds=None,
                         run_at=None, start_at=None, end_at=None, misfire_policy="run_once",
                         misfire_grace_seconds=5, run_all_limit=100, paused=False)

CHAIN = "nightly-etl"
# state, job name (None: an end node), next state, error state
CHAIN_NODES = [
    ("extract", "etl-extract", "transform", "failed"),
    ("transform", "etl-transform", "load", "failed"),
    ("load", "etl-load", "done", "failed"),
    ("done", None, "", ""),
    ("failed", None, "", ""),
]
# (id, initial state, parameters, repeat every N seconds or None, title). The repeating order
# goes through the chain once a minute, so a newcomer always has an order to watch move.
ORDERS = [
    ("order-1", "extract", {"date": "today", "order": "order-1"}, None,
     "The demo's first order"),
    ("every-minute", "extract", {"date": "today", "order": "every-minute"}, 60,
     "A repeating order: through the chain once a minute"),
]


class Command(OperatorCommand):
    help = ("Load the demo clusters demo-passive (jobs, the job chain nightly-etl and one "
            "order) and demo-active (load-balanced jobs). Safe to run again: it updates by "
            "name.")

    def add_arguments(self, parser):
        parser.add_argument("--cluster", default="",
                            help="Load only this cluster (demo-passive or demo-active; another "
                                 "name gets demo-passive's jobs). Default: both.")

    def handle(self, *args, **opts):
        only = opts["cluster"]
        if not only:
            demos = list(DEMOS.items())
        else:
            demos = [(only, DEMOS.get(only) or (f"The opscenter demo ({only}).", JOBS, True))]
        self.lines: list[str] = []
        with transaction.atomic():
            for name, (description, jobs, with_chain) in demos:
                self._cluster(name, description, jobs, with_chain)
        self.stdout.write("\n".join(self.lines))
        names = ", ".join(name for name, _ in demos)
        self.stdout.write(f"Demo loaded ({names}). `./run demo` starts its nodes; by hand: "
                          f"./run node --cluster {demos[0][0]}")

    def _cluster(self, name: str, description: str, jobs: list, with_chain: bool) -> None:
        cluster = Cluster.objects.filter(name=name).first()
        if cluster is None:
            cluster = Cluster(name=name, description=description)
            self._validate(cluster, f"cluster {name}")
            cluster.save()
            self._say("created", "cluster", name)
        else:
            self._say("unchanged", "cluster", name)
        by_name = {job_name: self._job(cluster, job_name, fields, schedule)
                   for job_name, fields, schedule in jobs}
        if with_chain:
            self._chain(cluster, by_name)

    # ------------------------------------------------------------------ pieces

    def _job(self, cluster: Cluster, name: str, fields: dict, schedule: dict | None) -> Job:
        values = {**JOB_DEFAULTS, **fields}
        job = Job.objects.filter(cluster=cluster, name=name).first()
        status = "created" if job is None else "unchanged"
        if job is None:
            job = Job(cluster=cluster, name=name)
        if _assign(job, values) and job.pk:
            status = "updated"
        if status != "unchanged":
            self._validate(job, f"job {name}")
            job.save()
        what = f"{job.kind} job"
        if schedule is None:
            self._say(status, what, name, "(a step of the job chain)")
            return job
        sched = job.schedules.order_by("id").first()
        s_status = "created" if sched is None else "unchanged"
        if sched is None:
            sched = Schedule(job=job, cluster=cluster)
        if _assign(sched, {**SCHEDULE_DEFAULTS, **schedule}) and sched.pk:
            s_status = "updated"
        if s_status != "unchanged":
            self._validate(sched, f"schedule of job {name}")
            sched.save()
        self._say(status, what, name, f"schedule {s_status}: {_describe(sched)}")
        return job

    def _chain(self, cluster: Cluster, jobs: dict[str, Job]) -> None:
        problems = check_chain_graph([
            {"state": s, "job": j, "next_state": n, "error_state": e}
            for s, j, n, e in CHAIN_NODES
        ])
        if problems:  # the definition above is ours: a problem here is a bug in this file
            raise CommandError(f"the demo chain {CHAIN} is unsound: " + " ".join(problems))
        chain = JobChain.objects.filter(cluster=cluster, name=CHAIN).first()
        status = "unchanged"
        if chain is None:
            chain = JobChain(cluster=cluster, name=CHAIN,
                             title="Nightly ETL: extract, transform, load")
            self._validate(chain, f"job chain {CHAIN}")
            chain.save()
            status = "created"
        changed = []
        for position, (state, job_name, next_state, error_state) in enumerate(CHAIN_NODES):
            node = ChainNode.objects.filter(chain=chain, state=state).first()
            if node is None:
                node = ChainNode(chain=chain, state=state)
            values = dict(job=jobs[job_name] if job_name else None, next_state=next_state,
                          error_state=error_state, position=position, action="active")
            if _assign(node, values) or node.pk is None:
                self._validate(node, f"node {state} of chain {CHAIN}")
                node.save()
                changed.append(state)
        if changed and status == "unchanged":
            status = "updated"
        graph = " -> ".join(s for s, *_ in CHAIN_NODES[:4]) + " (error: failed)"
        self._say(status, "job chain", CHAIN, graph)
        for order_id, state, parameters, every, title in ORDERS:
            order = Order.objects.filter(chain=chain, order_id=order_id).first()
            if order is not None:
                # An order moves on its own; reloading the demo does not put it back.
                self._say("unchanged", "order", order_id, f"at {order.state} ({order.status})")
                continue
            order = Order(chain=chain, order_id=order_id, initial_state=state, state=state,
                          parameters=parameters, title=title,
                          repeat_kind=Order.repeat_kind_of("", every),
                          interval_seconds=every)
            self._validate(order, f"order {order_id}")
            order.save()
            self._say("created", "order", order_id, f"at {order.state}")

    # ------------------------------------------------------------------ helpers

    def _validate(self, obj, what: str) -> None:
        from django.core.exceptions import ValidationError

        try:
            obj.full_clean()
        except ValidationError as exc:
            raise CommandError(f"{what} is invalid: {exc.messages}") from None

    def _say(self, status: str, what: str, name: str, detail: str = "") -> None:
        self.lines.append(f"  {status:<9} {what:<13} {name:<17} {detail}".rstrip())


def _assign(obj, values: dict) -> bool:
    """Set the fields that differ; True if any did."""
    changed = False
    for field, value in values.items():
        current = getattr(obj, field + "_id") if field == "job" else getattr(obj, field)
        wanted = value.pk if field == "job" and value is not None else value
        if current != wanted:
            setattr(obj, field, value)
            changed = True
    return changed


def _describe(schedule: Schedule) -> str:
    text = schedule.describe()
    if schedule.next_fire_at:
        text += f", next fire {schedule.next_fire_at:%H:%M:%S} UTC"
    return text
