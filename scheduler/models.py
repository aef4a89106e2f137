"""The scheduler's data: clusters and their members, jobs, schedules, the task ledger,
job chains and orders, and the event log. One database is the single source of truth.

Every daemon query names the index it relies on (see each Meta.indexes).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from scheduler import chaingraph, eventlog, timing
from scheduler.chaingraph import check_chain_graph  # noqa: F401  (models.check_chain_graph)
from scheduler.clock import db_now
from scheduler.eventlog import Actor
from scheduler.executors.registry import refusals as executor_refusals
from scheduler.validators import (
    celery_queue_problem,
    door_errors,
    validate_cron,
    validate_data_map,
    validate_name,
    validate_parameters,
    validate_timezone,
)
from scheduler.wakeup import notify_nodes


def empty_dict() -> dict:
    return {}


def empty_list() -> list:
    return []


def default_heartbeat_interval() -> float:
    return float(settings.OPSCENTER["HEARTBEAT_INTERVAL"])


def default_dead_after() -> float:
    return float(settings.OPSCENTER["DEAD_AFTER"])


class Cluster(models.Model):
    """One logical scheduler; every job, chain and member belongs to exactly one."""

    class Mode(models.TextChoices):
        SINGLE = "single", "single node"
        PASSIVE = "passive", "passive (fail-over)"
        ACTIVE = "active", "active (load balancing)"

    name = models.CharField(max_length=100, unique=True, validators=[validate_name])
    description = models.TextField(blank=True)
    # Set by the first member that starts; later members must match it while any is alive.
    mode = models.CharField(max_length=10, choices=Mode.choices, blank=True)
    # Passive cluster lease: the active member, its epoch, and until when it holds.
    lease_holder = models.ForeignKey(
        "Member", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_epoch = models.BigIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # A switch-over asked for by an operator: the active member hands the lease to this one.
    handover_to = models.ForeignKey(
        "Member", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["name"]
        # Operating a cluster is not editing it (scheduler/roles.py groups the permissions).
        permissions = [("switchover_cluster", "Can switch a passive cluster over")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = door_errors(self)
        if errors:
            raise ValidationError(errors)

    def live_members(self):
        return self.members.filter(state__in=Member.LIVE_STATES)


class Member(models.Model):
    """One running `runscheduler` process. A restart is a new row; the old one stays as history."""

    class State(models.TextChoices):
        ACTIVE = "active", "active"
        STANDBY = "standby", "standby"
        STOPPING = "stopping", "stopping"
        STOPPED = "stopped", "stopped"
        DEAD = "dead", "dead"

    class Role(models.TextChoices):
        NONE = "", "-"
        PRIMARY = "primary", "primary"
        BACKUP = "backup", "backup"

    LIVE_STATES = ("active", "standby", "stopping")

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="members")
    name = models.CharField(max_length=100, validators=[validate_name])
    mode = models.CharField(max_length=10, choices=Cluster.Mode.choices)
    role = models.CharField(max_length=10, choices=Role.choices, blank=True)
    backup_precedence = models.IntegerField(default=0)
    reclaim = models.BooleanField(default=False)
    labels = models.JSONField(default=empty_list, blank=True)
    workers = models.PositiveIntegerField(default=1)
    host = models.CharField(max_length=255)
    ip = models.CharField(max_length=64, blank=True)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=40)
    state = models.CharField(max_length=10, choices=State.choices)
    started_at = models.DateTimeField(db_default=Now())
    heartbeat_at = models.DateTimeField(db_default=Now())
    # The member's own clock minus the database's, seen at its last heartbeat (milliseconds).
    clock_skew_ms = models.IntegerField(default=0)
    running_tasks = models.PositiveIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)
    stop_reason = models.CharField(max_length=200, blank=True)
    declared_dead_by = models.CharField(max_length=100, blank=True)
    # The member's own timings (seconds), written when it joins: the console colours a
    # heartbeat's age by them (late past half of dead_after, dead past it).
    heartbeat_interval = models.FloatField(default=default_heartbeat_interval)
    dead_after = models.FloatField(default=default_dead_after)

    class Meta:
        ordering = ["cluster", "name", "-started_at"]
        constraints = [
            # A second live member with the same name in a cluster is impossible.
            models.UniqueConstraint(
                fields=["cluster", "name"],
                condition=Q(state__in=("active", "standby", "stopping")),
                name="member_one_live_name_per_cluster",
            )
        ]
        indexes = [
            # detect_dead_members and the console's cluster view: live members of a cluster.
            models.Index(fields=["cluster", "state"], name="member_cluster_state"),
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.cluster.name}" if self.cluster_id else self.name

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES


class JobQuerySet(models.QuerySet):
    def in_cluster(self, cluster_name: str):
        return self.filter(cluster__name=cluster_name)


class Job(models.Model):
    """What runs: a shell command line or a Python callable."""

    class Kind(models.TextChoices):
        SHELL = "shell", "shell command"
        PYTHON = "python", "python callable"
        # A function decorated with Django's @task (django.tasks), enqueued on its backend;
        # the task row follows the enqueued result (scheduler/executors/djtasks.py).
        TASK = "task", "django.tasks task"

    class Overlap(models.TextChoices):
        QUEUE = "queue", "queue the new run"
        SKIP = "skip", "skip the new run"
        REPLACE = "replace", "stop the running one, start the new one"

    class Executor(models.TextChoices):
        NODE = "node", "node worker pool"
        CELERY = "celery", "Celery queue"

    class Isolation(models.TextChoices):
        THREAD = "thread", "a thread of the node"
        PROCESS = "process", "a process of its own"

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=100, validators=[validate_name])
    title = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SHELL)
    command = models.TextField(
        help_text="shell: a command line for /bin/sh; python: a dotted path such as "
        "'myapp.jobs:nightly' to a callable that receives a context; task: the dotted path "
        "of a function decorated with Django's @task, enqueued with the parameters as "
        "keyword arguments."
    )
    working_directory = models.CharField(max_length=500, blank=True)
    parameters = models.JSONField(
        default=empty_dict,
        blank=True,
        validators=[validate_parameters],
        help_text="JSON object; shell jobs see each key in their environment.",
    )
    stateful = models.BooleanField(
        default=False,
        help_text="Store the data map a run leaves behind for the next run; runs never overlap.",
    )
    data_map = models.JSONField(
        default=empty_dict,
        blank=True,
        validators=[validate_data_map],
        help_text="The job data map; a stateful job's runs read and update it.",
    )
    timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: no limit."
    )
    max_retries = models.PositiveIntegerField(default=0)
    retry_backoff_seconds = models.FloatField(
        default=10.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(86400.0)],
        help_text="Wait before retry n: this times 2^(n-1).",
    )
    max_parallel = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    overlap_policy = models.CharField(max_length=10, choices=Overlap.choices, default="queue")
    recover_lost = models.BooleanField(
        default=True, help_text="Run again a task lost with a dead member."
    )
    affinity = models.CharField(
        max_length=100,
        blank=True,
        help_text="Run only on the member of this name or on members with this --label.",
    )
    executor = models.CharField(max_length=10, choices=Executor.choices, default="node")
    # executor "celery": the Celery queue the node sends the job's tasks to (scheduler/executors/
    # celery_executor.py); empty: Celery's default queue "celery".
    celery_queue = models.CharField(
        max_length=100, blank=True, default="", db_default="",
        help_text="Executor celery: the Celery queue to send the work to (empty: 'celery').")
    isolation = models.CharField(
        max_length=10, choices=Isolation.choices, default="thread",
        help_text="python jobs: run in a thread of the node (fast), or in a process of their "
        "own (for untrusted code: a crash or os._exit fails the task, not the node).",
    )
    paused = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["cluster", "name"]
        # Operating jobs (their schedules and tasks too) is not editing them: a job's command
        # is code that runs on every node, change_job is for those who may write it.
        permissions = [("operate_job", "Can pause, resume, run now and cancel jobs")]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="job_unique_name_in_cluster"),
            models.CheckConstraint(
                condition=Q(max_parallel__gte=1), name="job_max_parallel_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {**_data_map_errors(self, ("parameters", "data_map")), **door_errors(self)}
        if self.kind == self.Kind.PYTHON:
            path = (self.command or "").strip()
            if not path or " " in path or ("." not in path and ":" not in path):
                errors["command"] = (
                    "A python job needs a dotted path to a callable, e.g. 'myapp.jobs:nightly'."
                )
        elif self.kind == self.Kind.TASK:
            # --- django.tasks (scheduler/executors/djtasks.py) ---
            from scheduler.executors import djtasks

            problem = djtasks.task_problem(self.command)
            if problem:
                errors["command"] = problem
            elif "parameters" not in errors:
                problem = djtasks.parameters_problem(self.parameters)
                if problem:
                    errors["parameters"] = problem
        elif not (self.command or "").strip():
            errors["command"] = "A shell job needs a command line."
        # What the executors declare they support (scheduler/executors/registry.py): a
        # combination none of them runs is refused here, at every door.
        for name, problem in executor_refusals(self.executor, self.kind, self.isolation,
                                               self.stateful).items():
            errors.setdefault(name, problem)
        if self.stateful and self.max_parallel != 1:
            errors["max_parallel"] = "A stateful job never overlaps: max parallel must be 1."
        # (One too long has its field's own error.)
        if self.celery_queue and "celery_queue" not in errors and len(self.celery_queue) <= \
                self._meta.get_field("celery_queue").max_length:
            problem = celery_queue_problem(self.celery_queue)
            if problem is None and self.executor != self.Executor.CELERY:
                problem = ("Only a job of executor celery has a Celery queue: empty it, or "
                           "choose executor celery.")
            if problem:
                errors["celery_queue"] = problem
        if self.affinity and "affinity" not in errors:
            try:
                validate_name(self.affinity)
            except ValidationError as exc:
                errors["affinity"] = exc.messages
        if errors:
            raise ValidationError(errors)

    # -- operator actions: each is a conditional update plus an event, safe from any door --

    def pause(self, actor: Actor | str = "") -> bool:
        with transaction.atomic():
            changed = Job.objects.filter(pk=self.pk, paused=False).update(paused=True)
            if changed:
                # Out of the nodes' due scan while paused; resume starts again from then.
                self.schedules.update(next_fire_at=None)
                eventlog.job_paused(self, actor)
        self.paused = True
        return bool(changed)

    def resume(self, actor: Actor | str = "") -> bool:
        with transaction.atomic():
            changed = Job.objects.filter(pk=self.pk, paused=True).update(paused=False)
            if changed:
                # Fires owed while paused are not owed: start again from now.
                now = db_now()
                for schedule in self.schedules.select_for_update():
                    schedule.restart_from(now)
                eventlog.job_resumed(self, actor)
                notify_nodes(self.cluster_id)
        self.paused = False
        return bool(changed)

    def run_now(self, actor: Actor | str = "", parameters: dict | None = None) -> Task:
        """Queue a manual run; the first member with free capacity (and affinity) starts it."""
        if parameters is not None:
            validate_parameters(parameters)
        with transaction.atomic():
            now = db_now()
            task = Task.objects.create(
                cluster_id=self.cluster_id,
                job=self,
                trigger=Task.Trigger.MANUAL,
                state=Task.State.QUEUED,
                scheduled_for=now,
                not_before=now,
                parameters=parameters or {},
                requested_by=str(actor),
            )
            eventlog.job_run_now(self, task, actor)
        return task


class Schedule(models.Model):
    """When a job runs: cron in a time zone, a fixed interval, or once."""

    class Kind(models.TextChoices):
        CRON = "cron", "cron"
        INTERVAL = "interval", "fixed interval"
        ONCE = "once", "once"

    class Misfire(models.TextChoices):
        RUN_ONCE = "run_once", "run once for all missed fires"
        RUN_ALL = "run_all", "run every missed fire (bounded)"
        SKIP = "skip", "skip missed fires"

    # Denormalised from the job so the daemon's due query reads one table.
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+", editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="schedules")
    title = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CRON)
    cron = models.CharField(
        max_length=200, blank=True, validators=[validate_cron],
        help_text="Five fields: minute hour day-of-month month day-of-week.",
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    run_at = models.DateTimeField(null=True, blank=True, help_text="For a schedule that runs once.")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    # Interval fires are anchor + k * interval: no drift however late a fire was taken.
    anchor_at = models.DateTimeField(null=True, blank=True, editable=False)
    misfire_policy = models.CharField(max_length=10, choices=Misfire.choices, default="run_once")
    misfire_grace_seconds = models.PositiveIntegerField(
        default=5, validators=[MaxValueValidator(86400)],
        help_text="A fire taken later than this is a misfire and follows the policy.",
    )
    run_all_limit = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1)],
        help_text="run_all: at most this many missed fires are run; older ones are recorded.",
    )
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_fire_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Bumped on every change of the definition; a node caches the maths by (id, version).
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    DEFINITION_FIELDS = (
        "kind", "cron", "timezone", "interval_seconds", "run_at", "start_at", "end_at",
        "misfire_policy", "misfire_grace_seconds", "run_all_limit",
    )

    class Meta:
        ordering = ["job", "id"]
        indexes = [
            # claim_due_fires: due, unpaused schedules of a cluster by next fire time.
            models.Index(
                fields=["cluster", "next_fire_at"],
                condition=Q(paused=False, next_fire_at__isnull=False),
                name="schedule_due",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(interval_seconds__isnull=True) | Q(interval_seconds__gte=1),
                name="schedule_interval_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job.name}: {self.describe()}" if self.job_id else self.describe()

    def describe(self) -> str:
        if self.kind == self.Kind.CRON:
            return f"cron '{self.cron}' {self.timezone}"
        if self.kind == self.Kind.INTERVAL:
            return f"every {self.interval_seconds} s"
        return f"once at {self.run_at:%Y-%m-%d %H:%M:%S %Z}" if self.run_at else "once"

    def timing(self) -> timing.Timing:
        return timing.Timing(
            kind=self.kind,
            cron=self.cron or "",
            timezone=self.timezone or "UTC",
            interval_seconds=self.interval_seconds or 0,
            anchor=self.anchor_at or self.start_at,
            run_at=self.run_at,
            start_at=self.start_at,
            end_at=self.end_at,
        )

    def definition(self) -> dict:
        """The definition in force, as plain JSON, for the event log (the audit reads it back)."""
        out = {}
        for name in self.DEFINITION_FIELDS + ("anchor_at",):
            value = getattr(self, name)
            out[name] = value.isoformat() if hasattr(value, "isoformat") else value
        return out

    def clean(self) -> None:
        errors: dict = door_errors(self)
        if self.kind == self.Kind.CRON and not self.cron:
            errors["cron"] = "A cron schedule needs a cron expression."
        if self.kind == self.Kind.INTERVAL and not self.interval_seconds:
            errors["interval_seconds"] = "An interval schedule needs an interval of at least 1 s."
        if self.kind == self.Kind.ONCE and not self.run_at:
            errors["run_at"] = "A schedule that runs once needs a time."
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            errors["end_at"] = "The end must be after the start."
        if not errors and not self._field_invalid():
            try:
                t = self._timing_for_check()
                timing.check(t)
                if self._definition_changed() and timing.first_fire(t, db_now()) is None:
                    errors["__all__"] = ("This schedule would never fire: its time or its end "
                                         "is in the past.")
            except timing.TimingError as exc:
                errors["__all__"] = str(exc)
            except OverflowError:
                errors["__all__"] = "A date of this schedule is too far in the future."
        if errors:
            raise ValidationError(errors)

    def _definition_changed(self) -> bool:
        if not self.pk:
            return True
        saved = Schedule.objects.filter(pk=self.pk).values(*self.DEFINITION_FIELDS).first()
        return saved is None or any(saved[f] != getattr(self, f) for f in self.DEFINITION_FIELDS)

    def _field_invalid(self) -> bool:
        """A bad cron or zone is already reported on its field; say it once."""
        try:
            if self.kind == self.Kind.CRON:
                timing.validate_cron(self.cron)
            timing.validate_timezone(self.timezone)
        except timing.TimingError:
            return True
        return False

    def _timing_for_check(self) -> timing.Timing:
        t = self.timing()
        if t.kind == "interval" and t.anchor is None:
            # Not saved yet: the anchor will be the time of the save.
            from django.utils import timezone as djtz

            return timing.Timing(**{**_timing_kwargs(t), "anchor": djtz.now()})
        return t

    def save(self, *args, actor: Actor | str = "", **kwargs) -> None:
        """Saving recomputes the next fire from now when the definition changed, and records
        the definition in force in the event log (naming `actor`, who changed it) so an edit
        can be audited on both sides."""
        if self.job_id and not self.cluster_id:
            self.cluster_id = self.job.cluster_id
        previous = None
        if self.pk:
            previous = Schedule.objects.filter(pk=self.pk).values(*self.DEFINITION_FIELDS,
                                                                  "paused").first()
        changed = previous is None or any(
            previous[f] != getattr(self, f) for f in self.DEFINITION_FIELDS
        )
        with transaction.atomic(using=kwargs.get("using")):
            if changed:
                now = db_now()
                if self.kind == self.Kind.INTERVAL:
                    self.anchor_at = self.start_at or now
                else:
                    self.anchor_at = None
                if previous is not None:
                    self.version = (self.version or 1) + 1
                self.next_fire_at = timing.first_fire(self.timing(), now)
            super().save(*args, **kwargs)
            if changed:
                write = eventlog.schedule_changed if previous else eventlog.schedule_created
                write(self, actor)

    def restart_from(self, now) -> None:
        """Resume point: the next fire at or after `now` (fires owed while paused are not owed)."""
        self.next_fire_at = timing.first_fire(self.timing(), now)
        Schedule.objects.filter(pk=self.pk).update(next_fire_at=self.next_fire_at)

    def pause(self, actor: Actor | str = "") -> bool:
        with transaction.atomic():
            changed = Schedule.objects.filter(pk=self.pk, paused=False).update(
                paused=True, next_fire_at=None)
            if changed:
                eventlog.schedule_paused(self, actor)
        self.paused = True
        return bool(changed)

    def resume(self, actor: Actor | str = "") -> bool:
        with transaction.atomic():
            changed = Schedule.objects.filter(pk=self.pk, paused=True).update(paused=False)
            if changed:
                self.restart_from(db_now())
                eventlog.schedule_resumed(self, actor)
                notify_nodes(self.cluster_id)
        self.paused = False
        return bool(changed)


def _data_map_errors(instance, fields: tuple[str, ...]) -> dict:
    """Django skips field validators for "empty" JSON ([] and null among them), so a data map
    field is checked here as well: it must be a JSON object, whatever the door."""
    errors = {}
    for name in fields:
        try:
            validate_data_map(getattr(instance, name))
        except ValidationError as exc:
            errors[name] = exc.messages
    return errors


def _timing_kwargs(t: timing.Timing) -> dict:
    return {name: getattr(t, name) for name in t.__dataclass_fields__}


class TaskQuerySet(models.QuerySet):
    def unfinished(self):
        return self.filter(state__in=Task.UNFINISHED_STATES)


class Task(models.Model):
    """One execution of a job: a fire of a schedule, a retry, a recovery, or a manual run.

    The fire ledger: (schedule, scheduled_for, attempt) is unique, so a fire cannot start twice.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        TIMED_OUT = "timed_out", "timed out"
        CANCELLED = "cancelled", "cancelled"
        LOST = "lost", "lost"
        SKIPPED = "skipped", "skipped"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "schedule"
        MANUAL = "manual", "run now"
        RETRY = "retry", "retry"
        RECOVERY = "recovery", "recovery"
        ORDER = "order", "order step"

    UNFINISHED_STATES = ("queued", "running")
    FINISHED_STATES = ("succeeded", "failed", "timed_out", "cancelled", "lost", "skipped")

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks")
    schedule = models.ForeignKey(
        Schedule, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    scheduled_for = models.DateTimeField(help_text="The fire time this task is for.")
    attempt = models.PositiveIntegerField(default=1)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    state = models.CharField(max_length=10, choices=State.choices)
    member = models.ForeignKey(
        Member, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    # A queued task (retry, recovery, overlap queue, run now) starts no earlier than this.
    not_before = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    # When a member took the task to start it (the claim's time), and when the job's own code
    # was really entered on that member (its monotonic clock, converted to the database's);
    # empty for a task that was never entered.
    claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    parameters = models.JSONField(default=empty_dict, blank=True,
                                  validators=[validate_parameters],
                                  help_text="Merged over the job's parameters for this run.")
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by = models.CharField(max_length=150, blank=True)
    # Set by an operator or by the overlap policy `replace`; the owning member stops the task.
    cancel_reason = models.CharField(max_length=200, blank=True)
    lost_at = models.DateTimeField(null=True, blank=True)
    # How many times in a row, along this fire's recoveries, a member died while running an
    # earlier attempt (ledger.lose_member_tasks); when this attempt's member dies too and the
    # count reaches QUARANTINE_AFTER_DEATHS, the task is quarantined, not run again.
    # db_default: the claim inserts fire rows in raw SQL without this column.
    member_deaths = models.PositiveSmallIntegerField(default=0, db_default=0)
    # The job was entered although the task was (or was then) declared lost with its member:
    # it ran there besides any recovery run. When, on the database clock; the audit's DOUBLE.
    ran_unowned_at = models.DateTimeField(null=True, blank=True)
    # A step of an order (scheduler/ledger/orders.py): the order, the node's state and the
    # order's step number, carried into the step's retries and recoveries. No index of its
    # own (every fire would pay for it): the partial unique constraint below serves an
    # order's step history. db_default: the claim inserts fire rows in raw SQL.
    order = models.ForeignKey("Order", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="steps", db_index=False)
    order_state = models.CharField(max_length=100, blank=True, default="", db_default="")
    order_step = models.PositiveIntegerField(null=True, blank=True)
    # Executor celery: the worker's lease on the running task (database time), set when a
    # Celery worker takes the task and renewed while it runs; the node declares the task lost
    # when it is not renewed in time (scheduler/executors/celery_executor.py).
    celery_seen_at = models.DateTimeField(null=True, blank=True)
    # The id of the work this task handed to another system: for a job of kind `task`, the
    # django.tasks result it enqueued (written at once, so a recovery of a lost task follows
    # that result instead of enqueuing again). db_default: the claim inserts rows in raw SQL.
    external_id = models.CharField(max_length=200, blank=True, default="", db_default="")

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for", "attempt"],
                condition=Q(schedule__isnull=False),
                name="task_one_per_fire_attempt",
            ),
            # An order's step runs once: (order, step, attempt) is unique. Partial, so fires
            # never touch it; an order's step history reads it too.
            models.UniqueConstraint(
                fields=["order", "order_step", "attempt"],
                condition=Q(order__isnull=False),
                name="task_one_per_order_step_attempt",
            ),
        ]
        indexes = [
            # claim_queued_tasks: ready queued tasks of a cluster.
            models.Index(fields=["cluster", "not_before"], condition=Q(state="queued"),
                         name="task_queued"),
            # claim (overlap and max parallel): running tasks of a job. Only running rows, so
            # the index stays small under the churn of thousands of fires per second.
            models.Index(fields=["job"], condition=Q(state="running"), name="task_job_running"),
            # recover_lost_tasks and cancel requests: running tasks of a member.
            models.Index(fields=["member"], condition=Q(state="running"),
                         name="task_member_running"),
            # admin and console lists: a job's tasks, newest first.
            models.Index(fields=["job", "-scheduled_for"], name="task_job_recent"),
            # prune_history: old finished tasks.
            models.Index(fields=["created_at"], name="task_created"),
            # The console's dashboard: failures of the last hour and day (few rows; partial).
            models.Index(fields=["finished_at"], name="task_failures",
                         condition=Q(state__in=("failed", "timed_out", "lost"))),
        ]

    def __str__(self) -> str:
        return f"task {self.pk} of {self.job.name if self.job_id else '?'}"

    @property
    def lateness(self) -> timedelta | None:
        if self.started_at and self.scheduled_for and self.trigger == self.Trigger.SCHEDULE:
            return self.started_at - self.scheduled_for
        return None

    def log_text(self) -> str:
        """The whole captured log (small logs; the console reads big ones through tasklogs)."""
        return "".join(self.log_chunks.order_by("id").values_list("text", flat=True))

    def request_cancel(self, reason: str, actor: Actor | str = "") -> bool:
        """Ask the member running this task to stop it (a queued one is cancelled at once).

        A queued step of an order (a retry or a recovery) ends its step here, as a cancelled
        running step does when its member records it: in the same transaction, the order
        stays at its node, suspended (ledger.orders.after_steps; nothing else would move it,
        since no member ever records a task that never ran)."""
        from scheduler import ledger

        with transaction.atomic():
            queued = Task.objects.filter(pk=self.pk, state=Task.State.QUEUED).update(
                state=Task.State.CANCELLED, finished_at=Now(), error=f"cancelled: {reason}"
            )
            running = 0
            if not queued:
                running = Task.objects.filter(pk=self.pk, state=Task.State.RUNNING).update(
                    cancel_reason=reason
                )
            if queued or running:
                notify_nodes(self.cluster_id)
                eventlog.task_cancel(self, reason, actor)
            step = Task.objects.filter(pk=self.pk).values_list(
                "order_id", "order_step", "job_id").first() if queued else None
            if step is not None and step[0] is not None:
                ledger.orders.after_steps(None, ledger._db_now_in_tx(), [ledger.orders.StepEnd(
                    order_id=step[0], order_step=step[1], outcome=Task.State.CANCELLED,
                    task_id=self.pk, job_id=step[2])])
        return bool(queued or running)


class TaskLog(models.Model):
    """Captured output of a task, stored in chunks while it runs so it can be read live."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="log_chunks")
    text = models.TextField()
    created_at = models.DateTimeField(db_default=Now())
    # The size in bytes (UTF-8) of the task's log up to the end of this chunk: a byte cursor
    # over the whole log lands in the first chunk ending after it (scheduler/tasklogs.py).
    # Set by every writer (ledger.write_logs, save); empty only on rows from before it.
    end_offset = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["id"]
        indexes = [
            # tasklogs.read_from / size (the console's live log): a task's chunks from a cursor.
            models.Index(fields=["task", "end_offset"], name="tasklog_task_end"),
        ]

    def __str__(self) -> str:
        return f"log of task {self.task_id}"

    def save(self, *args, **kwargs) -> None:
        if self.end_offset is None and self.task_id:
            from scheduler.tasklogs import with_offsets

            self.end_offset = with_offsets([(self.task_id, self.text)])[0].end_offset
        super().save(*args, **kwargs)


class MisfireRecord(models.Model):
    """Owed fires that were deliberately not run, one row per consecutive range."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="misfires")
    first_fire_at = models.DateTimeField()
    last_fire_at = models.DateTimeField()
    fire_count = models.PositiveIntegerField()
    policy = models.CharField(max_length=10, choices=Schedule.Misfire.choices)
    reason = models.CharField(max_length=20)
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    decided_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["schedule", "first_fire_at"], name="misfire_schedule")]

    def __str__(self) -> str:
        return f"{self.fire_count} fire(s) of schedule {self.schedule_id} not run ({self.reason})"


class JobChain(models.Model):
    """An ordered graph of nodes that orders travel, node by node."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="chains")
    name = models.CharField(max_length=100, validators=[validate_name])
    title = models.CharField(max_length=200, blank=True)
    distributed = models.BooleanField(
        default=False, help_text="In an active cluster any member may process any step."
    )
    stopped = models.BooleanField(default=False, help_text="A stopped chain moves no order.")
    max_orders = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="At most this many orders processed at once; empty: no limit.",
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["cluster", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="chain_unique_name_in_cluster")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = door_errors(self)
        if errors:
            raise ValidationError(errors)

    def graph_problems(self) -> list[str]:
        """What is wrong with the saved nodes' graph (chaingraph.check_chain_graph); []: sound."""
        return check_chain_graph(self.nodes.all())

    def orders_using(self, states) -> list[str]:
        """Why nodes of these states may not be deleted or renamed: the chain's orders that
        are not done and sit at one of them, start from it (their initial state: a reset, a
        repeating order's next run) or end at it, each named with the state; [] when none.
        Every door that edits a chain's nodes asks this first."""
        states = set(states)
        if not states:
            return []
        found = []
        for order in (self.orders.exclude(status__in=Order.DONE_STATUSES)
                      .filter(Q(state__in=states) | Q(initial_state__in=states)
                              | Q(end_state__in=states)).order_by("order_id")):
            uses = [f"{what} {state}" for what, state in (
                ("at", order.state), ("starting from", order.initial_state),
                ("ending at", order.end_state)) if state in states]
            found.append(f"order {self.name}/{order.order_id} ({', '.join(uses)})")
        return found

    # -- operator actions: a conditional update plus an event, safe from any door --

    def stop(self, actor: Actor) -> bool:
        """No order of the chain starts a step or moves on its own; running steps finish and
        their orders move to their next node, where they wait."""
        return self._set_stopped(True, actor)

    def unstop(self, actor: Actor) -> bool:
        return self._set_stopped(False, actor)

    def _set_stopped(self, stopped: bool, actor: Actor) -> bool:
        with transaction.atomic():
            changed = JobChain.objects.filter(pk=self.pk, stopped=not stopped).update(
                stopped=stopped)
            if changed:
                eventlog.chain_stopped(self, stopped, actor)
                if not stopped:
                    notify_nodes(self.cluster_id)
        self.stopped = stopped
        return bool(changed)


class ChainNode(models.Model):
    class Action(models.TextChoices):
        ACTIVE = "active", "active"
        STOPPED = "stopped", "stopped (orders wait here)"
        SKIPPED = "skipped", "skipped (orders pass through)"

    chain = models.ForeignKey(JobChain, on_delete=models.CASCADE, related_name="nodes")
    state = models.CharField(max_length=100, validators=[validate_name])
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.PROTECT,
                            related_name="chain_nodes", help_text="Empty: an end node.")
    next_state = models.CharField(max_length=100, blank=True)
    error_state = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=10, choices=Action.choices, default="active")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["chain", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["chain", "state"], name="node_unique_state_in_chain")
        ]

    def __str__(self) -> str:
        return f"{self.chain.name}:{self.state}" if self.chain_id else self.state

    @property
    def is_end(self) -> bool:
        return self.job_id is None

    def clean(self) -> None:
        errors = door_errors(self)
        if self.job_id and self.chain_id and self.job.cluster_id != self.chain.cluster_id:
            errors["job"] = "The job belongs to another cluster."
        if errors:
            raise ValidationError(errors)

    def set_action(self, action: str, actor: Actor) -> bool:
        """active, stopped (orders wait here) or skipped (orders pass to the next state without
        running the job). A running step is not affected. An end node has no action to set."""
        if action not in self.Action.values:
            raise ValidationError(f"'{action}' is not a node action; choose one of "
                                  f"{', '.join(self.Action.values)}.")
        if self.is_end and action != self.Action.ACTIVE:
            raise ValidationError(f"Node '{self.state}' is an end node: orders end there, it "
                                  "cannot be stopped or skipped.")
        with transaction.atomic():
            changed = ChainNode.objects.filter(pk=self.pk).exclude(action=action).update(
                action=action)
            if changed:
                eventlog.node_action(self, action, actor)
                if action != self.Action.STOPPED:
                    notify_nodes(self.chain.cluster_id)
        self.action = action
        return bool(changed)


class Order(models.Model):
    """A run of a job chain with its own parameters; it sits at a node state.

    Its status: waiting at a node (`waiting_reason()` says why when it cannot go on: a stopped
    node or chain, a paused job, the chain's limit), running a step (a task of the node's job;
    `suspend_requested` when it is to be suspended after that step), suspended, finished (it
    reached an end node or its end state), failed (it reached it after a step had failed: it
    took an error state on the way, `error_path`).

    A repeating order (JobScheduler's permanent order with a run time) carries its own
    schedule: cron in a time zone, or an interval in seconds (`repeat_kind`; the maths is
    timing.py's, as for a job's schedule). It waits until `next_start_at` (the first due time
    strictly after it was added: not at once), and when it reaches an end node, finished or
    failed, it goes back to its initial state and waits until its next due time, with an
    event for the run (ledger.orders). Runs missed while no member could take them (the
    cluster was down, or a run lasted longer than the interval) are not owed one by one: the
    order runs once at once, then at its next regular time after that run ends (the
    `run_once` misfire policy of schedules). Suspend, resume, move and reset work as for any
    order and leave the due time as it is.

    The nodes move it (scheduler/ledger/orders.py), guarded by its status and step; operators
    move it through the methods below, each guarded by its version. An order never leaves its
    state except through a recorded step or one of these.
    """

    class Status(models.TextChoices):
        WAITING = "waiting", "waiting at a node"
        RUNNING = "running", "running a step"
        SUSPENDED = "suspended", "suspended"
        FINISHED = "finished", "finished"
        FAILED = "failed", "failed"

    class Repeat(models.TextChoices):
        NONE = "", "does not repeat"
        CRON = "cron", "cron"
        INTERVAL = "interval", "fixed interval"

    DONE_STATUSES = ("finished", "failed")
    REPEAT_FIELDS = ("repeat_kind", "cron", "timezone", "interval_seconds")

    chain = models.ForeignKey(JobChain, on_delete=models.CASCADE, related_name="orders")
    order_id = models.CharField(max_length=100, validators=[validate_name])
    title = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=empty_dict, blank=True,
                                  validators=[validate_parameters])
    priority = models.IntegerField(default=0)
    initial_state = models.CharField(max_length=100)
    end_state = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=100, help_text="The node state the order is at.")
    status = models.CharField(max_length=10, choices=Status.choices, default="waiting")
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    # Guards every move: an update names the version it read.
    version = models.PositiveIntegerField(default=1)
    # Steps claimed so far; the running step's tasks carry its number (Task.order_step).
    step = models.PositiveIntegerField(default=0, editable=False)
    # Suspend asked for while a step ran: the order is suspended when that step ends.
    suspend_requested = models.BooleanField(default=False, editable=False)
    # A step failed since the order started (or was reset or moved): it ends failed.
    error_path = models.BooleanField(default=False, editable=False)
    # A repeating order: its own schedule (see the class's text).
    repeat_kind = models.CharField(
        "repeats", max_length=10, choices=Repeat.choices, default="", blank=True,
        help_text="A repeating order goes back to its initial state at the end of each run "
                  "and starts again at its next due time.")
    cron = models.CharField(
        max_length=200, blank=True, validators=[validate_cron],
        help_text="Repeats by cron: five fields, minute hour day-of-month month day-of-week.")
    timezone = models.CharField(max_length=64, default="UTC", blank=True,
                                validators=[validate_timezone],
                                help_text="The cron expression's time zone (empty: UTC).")
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Repeats every this many seconds, counted from when it was set.")
    # Interval runs are due at anchor + k * interval (no drift however long a run lasts).
    repeat_anchor_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When a repeating order may start its next run (null: whenever it can). The claim takes
    # only orders whose next_start_at is null or has come (the database's clock).
    next_start_at = models.DateTimeField(null=True, blank=True, editable=False)
    runs = models.PositiveIntegerField(default=0, editable=False,
                                       help_text="Runs of a repeating order that ended.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["chain", "-priority", "id"]
        indexes = [
            # ledger.orders.claim_steps: waiting orders in the claim's order, across chains, so
            # the claim's scan stops after its batch (partial: the finished ones, most rows,
            # never touch it).
            models.Index(fields=["-priority", "id"], condition=Q(status="waiting"),
                         name="order_claim"),
            # ledger.orders (max_orders) and the console: a chain's running orders.
            models.Index(fields=["chain"], condition=Q(status="running"),
                         name="order_running"),
            # ledger.orders.probe and next_start (the node, before and after an order claim):
            # per chain, is a waiting order due (next_start_at null, or come), and the
            # earliest due time still to come of a repeating order.
            models.Index(fields=["chain", "next_start_at"], condition=Q(status="waiting"),
                         name="order_due"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["chain", "order_id"], name="order_unique_id_in_chain"),
            models.CheckConstraint(
                condition=Q(interval_seconds__isnull=True) | Q(interval_seconds__gte=1),
                name="order_interval_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.chain.name}/{self.order_id}" if self.chain_id else self.order_id

    def clean(self) -> None:
        errors = door_errors(self)
        if errors or not self.chain_id:
            if errors:
                raise ValidationError(errors)
            return
        states = set(self.chain.nodes.values_list("state", flat=True))
        errors = _data_map_errors(self, ("parameters",))
        if self.initial_state not in states:
            errors["initial_state"] = (f"'{self.initial_state}' is not a state of chain "
                                       f"{self.chain.name} (states: {', '.join(sorted(states))}).")
        if self.end_state and self.end_state not in states:
            errors["end_state"] = f"'{self.end_state}' is not a state of chain {self.chain.name}."
        if self.state and self.state not in states:
            errors["state"] = f"'{self.state}' is not a state of chain {self.chain.name}."
        errors.update(self.repeat_errors())
        if errors:
            raise ValidationError(errors)

    def repeat_errors(self) -> dict[str, list[str]]:
        """What is wrong with the order's own schedule, by field ({} when nothing): the
        checks of a job's schedule (validators, timing.check)."""
        errors: dict[str, list[str]] = {}
        if not self.timezone:
            self.timezone = "UTC"
        kind = self.repeat_kind or ""
        if kind not in self.Repeat.values:
            return {"repeat_kind": [f"'{kind}' is not a way to repeat (cron or interval)."]}
        if self.cron and self.interval_seconds is not None:
            return {"interval_seconds": ["Give a cron expression or an interval, not both."]}
        if kind == self.Repeat.CRON and not self.cron:
            errors["cron"] = ["A repeating order by cron needs a cron expression."]
        if kind == self.Repeat.INTERVAL and self.interval_seconds is None:
            errors["interval_seconds"] = ["A repeating order by interval needs an interval "
                                          "of at least 1 s."]
        if kind != self.Repeat.CRON and self.cron:
            errors["cron"] = ["A cron expression is only for an order that repeats by cron."]
        if kind != self.Repeat.INTERVAL and self.interval_seconds is not None:
            errors["interval_seconds"] = ["An interval is only for an order that repeats by "
                                          "interval."]
        if errors or not kind:
            return errors
        # The fields' own validators (validate_cron, validate_timezone) say what is wrong
        # with a bad expression or zone; this says what timing.py would refuse beyond that.
        try:
            if kind == self.Repeat.CRON:
                timing.validate_cron(self.cron)
            timing.validate_timezone(self.timezone)
        except timing.TimingError:
            return errors
        if kind == self.Repeat.INTERVAL and not (
                isinstance(self.interval_seconds, int) and self.interval_seconds >= 1):
            return errors
        try:
            t = self.repeat_timing(anchor=db_now())
            timing.check(t)
            if timing.next_fire(t, t.anchor) is None:
                errors["cron" if kind == self.Repeat.CRON else "interval_seconds"] = [
                    "This schedule never comes due."]
        except timing.TimingError as exc:
            errors["cron" if kind == self.Repeat.CRON else "interval_seconds"] = [str(exc)]
        except OverflowError:
            errors["interval_seconds"] = ["This interval is too long."]
        return errors

    @classmethod
    def repeat_kind_of(cls, cron: str = "", interval_seconds: int | None = None) -> str:
        """How an order given these repeats (the doors take a cron or an interval)."""
        if cron:
            return cls.Repeat.CRON
        return cls.Repeat.INTERVAL if interval_seconds is not None else cls.Repeat.NONE

    def repeat_timing(self, anchor=None) -> timing.Timing | None:
        """The order's own schedule as timing.py reads it; None for an order that does not
        repeat."""
        if not self.repeat_kind:
            return None
        return timing.Timing(kind=self.repeat_kind, cron=self.cron or "",
                             timezone=self.timezone or "UTC",
                             interval_seconds=self.interval_seconds or 0,
                             anchor=anchor or self.repeat_anchor_at)

    def describe_repeat(self) -> str:
        if self.repeat_kind == self.Repeat.CRON:
            return f"cron '{self.cron}' {self.timezone}"
        if self.repeat_kind == self.Repeat.INTERVAL:
            return f"every {self.interval_seconds} s"
        return ""

    def _repeat_changed(self) -> bool:
        if self.pk is None or self._state.adding:
            return True
        saved = Order.objects.filter(pk=self.pk).values(*self.REPEAT_FIELDS).first()
        return saved is None or any(saved[f] != getattr(self, f) for f in self.REPEAT_FIELDS)

    def save(self, *args, **kwargs) -> None:
        """A new or changed own schedule sets the next due time: the first strictly after
        now (the database's clock), so a repeating order never starts at once."""
        if not self.state:
            self.state = self.initial_state
        update_fields = kwargs.get("update_fields")
        if (update_fields is None or set(update_fields) & set(self.REPEAT_FIELDS)) and \
                self._repeat_changed():
            if self.repeat_kind:
                now = db_now()
                self.repeat_anchor_at = now
                self.next_start_at = timing.next_fire(self.repeat_timing(), now)
            else:
                self.repeat_anchor_at = self.next_start_at = None
            if update_fields is not None:
                kwargs["update_fields"] = sorted({*update_fields, "repeat_anchor_at",
                                                  "next_start_at"})
        super().save(*args, **kwargs)

    # -- reading --

    @property
    def is_done(self) -> bool:
        return self.status in self.DONE_STATUSES

    def waiting_reason(self, nodes: dict | None = None, running: int | None = None,
                       now=None) -> str:
        """Why a waiting order does not go on now ("" when nothing holds it, or it is not
        waiting): a repeating order's next due time has not come ("waiting until <time>"),
        the chain or its node is stopped, the node's job is paused, the chain is at its limit
        of orders at once. For the console and the commands (a few queries; a page of many
        orders passes the chain's nodes by state, its running orders' count and the database's
        `now`)."""
        if self.status != self.Status.WAITING:
            return ""
        held = self._held_reason(nodes, running)
        if self.next_start_at is not None:
            if now is None:
                now = db_now()
            if self.next_start_at > now:
                until = f"waiting until {self.next_start_text()}"
                return f"{until}; then: {held}" if held else until
        return held

    def next_start_text(self) -> str:
        """The next due time in the order's zone (a cron's), e.g. 2026-03-29 03:00:00 CEST."""
        if self.next_start_at is None:
            return ""
        try:
            zone = timing.validate_timezone(self.timezone or "UTC")
        except timing.TimingError:
            zone = timing.validate_timezone("UTC")
        return f"{self.next_start_at.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}"

    def _held_reason(self, nodes: dict | None, running: int | None) -> str:
        chain = self.chain
        if chain.stopped:
            return f"the job chain {chain.name} is stopped"
        if nodes is None:
            node = chain.nodes.select_related("job").filter(state=self.state).first()
        else:
            node = nodes.get(self.state)
        if node is None:
            return f"'{self.state}' is no longer a node of the chain"
        step = chaingraph.step_at(node, self.end_state)
        if step == chaingraph.Step.WAIT:
            return f"node {node.state} is stopped"
        if step == chaingraph.Step.RUN:
            if node.job.paused:
                return f"job {node.job.name} of node {node.state} is paused"
            if running is None and chain.max_orders:
                running = chain.orders.filter(status=self.Status.RUNNING).count()
            if chain.max_orders and running is not None and running >= chain.max_orders:
                return f"the chain runs its limit of {chain.max_orders} order(s) at once"
        return ""

    def status_text(self) -> str:
        """The status as an operator reads it, with why it waits."""
        if self.status == self.Status.RUNNING and self.suspend_requested:
            return f"running a step at {self.state}; suspended when it ends"
        reason = self.waiting_reason()
        if reason:
            return f"waiting at {self.state}: {reason}"
        return f"{self.get_status_display()} ({self.state})"

    # -- operator actions: each a conditional update guarded by the version, and an event --

    @classmethod
    def add(cls, chain: JobChain, order_id: str, *, title: str = "",
            parameters: dict | None = None, priority: int = 0, initial_state: str | None = None,
            end_state: str = "", cron: str = "", timezone: str = "UTC",
            interval_seconds: int | None = None, actor: Actor) -> Order:
        """A new order, waiting at its initial state (by default the chain's first state in
        graph order). With a `cron` expression (in `timezone`) or an `interval_seconds` it
        repeats: it starts at its first due time, not at once (see the class's text). Refused
        with a ValidationError when the chain is unsound, the id is taken in the chain, or a
        field is invalid."""
        nodes = list(chain.nodes.all())
        problems = check_chain_graph(nodes)
        if problems:
            raise ValidationError(f"Job chain {chain.name} is unsound, no order can be added: "
                                  + " ".join(problems))
        order = cls(chain=chain, order_id=order_id, title=title or "",
                    parameters={} if parameters is None else parameters, priority=priority,
                    initial_state=initial_state if initial_state is not None
                    else chaingraph.first_state(nodes),
                    end_state=end_state or "", cron=cron or "", timezone=timezone or "UTC",
                    interval_seconds=interval_seconds,
                    repeat_kind=cls.repeat_kind_of(cron, interval_seconds))
        order.state = order.initial_state
        taken = ValidationError({"order_id": f"Job chain {chain.name} already has an order "
                                             f"'{order_id}'."})
        order.full_clean(validate_constraints=False)
        if cls.objects.filter(chain=chain, order_id=order_id).exists():
            raise taken
        try:
            with transaction.atomic():
                order.save(force_insert=True)
                eventlog.order_action(order, "add", actor, f"added at {order.state}" + (
                    f", repeating ({order.describe_repeat()}), first run at "
                    f"{order.next_start_text()}" if order.repeat_kind else ""))
                notify_nodes(chain.cluster_id)
        except IntegrityError:
            raise taken from None
        return order

    def _locked(self) -> Order:
        """The order as it is now, locked (PostgreSQL; SQLite's write transaction serialises)."""
        try:
            return Order.objects.select_for_update().select_related("chain").get(pk=self.pk)
        except Order.DoesNotExist:
            raise ValidationError(f"Order {self.order_id} no longer exists.") from None

    def _apply(self, fresh: Order, action: str, actor: Actor, message: str,
               wake: bool = False, **changes) -> bool:
        changed = Order.objects.filter(pk=fresh.pk, version=fresh.version).update(
            version=F("version") + 1, updated_at=Now(), **changes)
        if not changed:  # cannot happen under the lock; say so rather than guess
            raise ValidationError(f"Order {fresh.order_id} changed meanwhile; try again.")
        self.refresh_from_db()
        eventlog.order_action(self, action, actor, message)
        if wake:
            notify_nodes(self.chain.cluster_id)
        return True

    @staticmethod
    def _stuck(fresh: Order) -> bool:
        """Running, with no task of its step queued or running: nothing will ever move it
        (older data, or a step whose last task ended without moving it). An operator's
        action may then act on it as on a suspended order (suspended, if that was asked)."""
        return fresh.status == Order.Status.RUNNING and not Task.objects.filter(
            order_id=fresh.pk, order_step=fresh.step,
            state__in=Task.UNFINISHED_STATES).exists()

    @classmethod
    def _settled(cls, fresh: Order) -> str:
        """The status a reset or a move leaves: suspended stays suspended (as does a stuck
        order asked to suspend); anything else waits."""
        if fresh.status == cls.Status.SUSPENDED or (
                fresh.status == cls.Status.RUNNING and fresh.suspend_requested):
            return cls.Status.SUSPENDED
        return cls.Status.WAITING

    def _refuse_running(self, fresh: Order, done: str, do: str) -> None:
        if fresh.status == self.Status.RUNNING and not self._stuck(fresh):
            raise ValidationError(
                f"Order {fresh.order_id} is running a step at {fresh.state}: it cannot be "
                f"{done} now. Suspend it, and {do} it once the step has ended (the order then "
                "waits, suspended).")

    def suspend(self, actor: Actor) -> bool:
        """Waiting: suspended at once. Running a step: the step finishes, the order moves on
        and then waits, suspended. Already suspended (or asked to be): False."""
        with transaction.atomic():
            fresh = self._locked()
            if fresh.is_done:
                raise ValidationError(f"Order {fresh.order_id} has {fresh.status}: there is "
                                      "nothing to suspend (reset it or move it to run it again).")
            if self._stuck(fresh):
                return self._apply(fresh, "suspend", actor, f"suspended at {fresh.state} (no "
                                   "task of its step was left)", status=self.Status.SUSPENDED,
                                   suspend_requested=False)
            if fresh.status == self.Status.SUSPENDED or fresh.suspend_requested:
                return False
            if fresh.status == self.Status.RUNNING:
                return self._apply(fresh, "suspend", actor, "to be suspended when its step at "
                                   f"{fresh.state} ends", suspend_requested=True)
            return self._apply(fresh, "suspend", actor, f"suspended at {fresh.state}",
                               status=self.Status.SUSPENDED)

    def resume(self, actor: Actor) -> bool:
        """Suspended: waiting again. Running with a suspend asked for: that request is
        withdrawn. Waiting or running: False."""
        with transaction.atomic():
            fresh = self._locked()
            if fresh.is_done:
                raise ValidationError(f"Order {fresh.order_id} has {fresh.status}: there is "
                                      "nothing to resume (reset it or move it to run it again).")
            if self._stuck(fresh):
                return self._apply(fresh, "resume", actor, f"resumed at {fresh.state} (no "
                                   "task of its step was left)", wake=True,
                                   status=self.Status.WAITING, suspend_requested=False)
            if fresh.status == self.Status.RUNNING and fresh.suspend_requested:
                return self._apply(fresh, "resume", actor, "no longer to be suspended after "
                                   "its step", suspend_requested=False)
            if fresh.status != self.Status.SUSPENDED:
                return False
            return self._apply(fresh, "resume", actor, f"resumed at {fresh.state}", wake=True,
                               status=self.Status.WAITING)

    def reset(self, actor: Actor) -> bool:
        """Back to its initial state, to run the chain again from there: a finished or failed
        order waits again, a suspended one stays suspended; its error path is forgotten and
        any member may take it. Refused while a step runs (a task of its step queued or running:
        suspend it first); an order `running` with no such task left is freed (_stuck)."""
        with transaction.atomic():
            fresh = self._locked()
            self._refuse_running(fresh, "reset", "reset")
            if not fresh.chain.nodes.filter(state=fresh.initial_state).exists():
                raise ValidationError(
                    f"Order {fresh.order_id}'s initial state '{fresh.initial_state}' is no "
                    f"longer a state of job chain {fresh.chain.name}: move it to a state "
                    "instead.")
            status = self._settled(fresh)
            if (fresh.state, fresh.status, fresh.error_path, fresh.member_id) == (
                    fresh.initial_state, status, False, None):
                return False
            return self._apply(fresh, "reset", actor,
                               f"reset from {fresh.state} to {fresh.initial_state}",
                               wake=status == self.Status.WAITING, state=fresh.initial_state,
                               status=status, error_path=False, member=None,
                               suspend_requested=False)

    def move(self, state: str, actor: Actor) -> bool:
        """To another state of its chain, to go on from there: a finished or failed order
        waits again, a suspended one stays suspended; its error path is forgotten. Refused
        while a step runs (as reset), and for a state that is not one of the chain's."""
        with transaction.atomic():
            fresh = self._locked()
            states = list(fresh.chain.nodes.values_list("state", flat=True))
            if state not in states:
                raise ValidationError(f"'{state}' is not a state of job chain "
                                      f"{fresh.chain.name} (states: {', '.join(states)}).")
            self._refuse_running(fresh, "moved", "move")
            status = self._settled(fresh)
            if (fresh.state, fresh.status) == (state, status):
                return False
            return self._apply(fresh, "move", actor, f"moved from {fresh.state} to {state}",
                               wake=status == self.Status.WAITING, state=state, status=status,
                               error_path=False, suspend_requested=False)

    def remove(self, actor: Actor) -> bool:
        """Delete the order (its steps' tasks stay in the ledger, no longer linked). Refused
        while a step runs (as reset): suspend it, and remove it once the step has ended."""
        with transaction.atomic():
            fresh = self._locked()
            self._refuse_running(fresh, "removed", "remove")
            eventlog.order_action(fresh, "remove", actor, f"removed at {fresh.state} "
                                  f"({fresh.status})")
            fresh.delete()
        return True


# What operators do, from any door (and what the nodes do to orders for them): the audit log.
OPERATOR_EVENT_KINDS = (
    "job.created", "job.changed", "job.deleted", "schedule.deleted",
    "job.paused", "job.resumed", "job.run_now", "schedule.created", "schedule.changed",
    "schedule.paused", "schedule.resumed", "task.cancel", "switchover.requested",
    "order.returned", "order.add", "order.suspend", "order.resume", "order.reset", "order.move",
    "order.remove", "order.changed", "chain.stop", "chain.unstop", "node.action",
)


class Event(models.Model):
    """The append-only event log (outbox): membership, roles, operator actions, misfires.

    Its id order is the order of events; the console follows it by id.
    """

    class Kind(models.TextChoices):
        MEMBER_JOINED = "member.joined"
        MEMBER_ACTIVE = "member.active"
        MEMBER_STANDBY = "member.standby"
        MEMBER_STOPPING = "member.stopping"
        MEMBER_STOPPED = "member.stopped"
        MEMBER_DEAD = "member.dead"
        MEMBER_REFUSED = "member.refused"
        LEASE_TAKEN = "lease.taken"
        LEASE_LOST = "lease.lost"
        LEASE_HANDOVER = "lease.handover"
        SWITCHOVER_REQUESTED = "switchover.requested"
        JOB_PAUSED = "job.paused"
        JOB_RESUMED = "job.resumed"
        JOB_RUN_NOW = "job.run_now"
        JOB_CREATED = "job.created"
        JOB_CHANGED = "job.changed"  # its definition edited (command, timeout, ...)
        JOB_DELETED = "job.deleted"
        SCHEDULE_DELETED = "schedule.deleted"
        SCHEDULE_CREATED = "schedule.created"
        SCHEDULE_CHANGED = "schedule.changed"
        SCHEDULE_PAUSED = "schedule.paused"
        SCHEDULE_RESUMED = "schedule.resumed"
        MISFIRE = "misfire"
        TASK_LOST = "task.lost"
        ORDER_RETURNED = "order.returned"
        TASK_CANCEL = "task.cancel"
        TASK_FAILED = "task.failed"
        TASK_QUARANTINED = "task.quarantined"
        TASK_RAN_UNOWNED = "task.ran_unowned"
        # Orders and chains: operators' requests (imperative) ...
        ORDER_ADD = "order.add"
        ORDER_SUSPEND = "order.suspend"
        ORDER_RESUME = "order.resume"
        ORDER_RESET = "order.reset"
        ORDER_MOVE = "order.move"
        ORDER_REMOVE = "order.remove"
        ORDER_CHANGED = "order.changed"  # its definition edited (title, parameters, ...)
        CHAIN_STOP = "chain.stop"
        CHAIN_UNSTOP = "chain.unstop"
        NODE_ACTION = "node.action"
        # ... and what the nodes do with orders (past tense).
        ORDER_MOVED = "order.moved"
        ORDER_SUSPENDED = "order.suspended"
        ORDER_FINISHED = "order.finished"
        ORDER_FAILED = "order.failed"

    class Source(models.TextChoices):
        ADMIN = "admin"
        CONSOLE = "console"
        CLI = "cli", "command line"
        API = "api", "API"
        NODE = "node"

    OPERATOR_KINDS = OPERATOR_EVENT_KINDS

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(db_default=Now())
    kind = models.CharField(max_length=30, choices=Kind.choices)
    actor = models.CharField(max_length=150, blank=True, help_text="Who: a user or a member.")
    source = models.CharField(max_length=10, choices=Source.choices, blank=True,
                              help_text="The door an operator action came through.")
    reason = models.TextField(blank=True, help_text="The operator's reason, if given.")
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    schedule = models.ForeignKey(Schedule, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    message = models.TextField()
    data = models.JSONField(default=empty_dict, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The console's follower and the audit: a cluster's events in order.
            models.Index(fields=["cluster", "id"], name="event_cluster_id"),
            models.Index(fields=["created_at"], name="event_created"),
            # The console's audit log (views/audit.py): operator actions newest first, paged
            # by id; partial, so the node's own events (most of them) never touch it.
            models.Index(fields=["id"], condition=Q(kind__in=OPERATOR_EVENT_KINDS),
                         name="event_operator_actions"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @classmethod
    def record(cls, cluster_id: int, kind: str, *, message: str, actor: str | Actor = "",
               member=None, job=None, job_id=None, schedule=None, task=None,
               data: dict | None = None) -> Event:
        """An event of any kind; scheduler/eventlog.py has a writer for each kind."""
        event = eventlog.build(
            cluster_id, kind, message, actor, member=member,
            job_id=job_id if job_id is not None else getattr(job, "pk", None),
            schedule=schedule, task=task, data=data or {},
        )
        event.save(force_insert=True)
        return event



class ConsolePreference(models.Model):
    """One console user's display zone and theme (the console shows times in the viewer's
    zone; the database and the nodes keep UTC)."""

    class Theme(models.TextChoices):
        AUTO = "auto", "as the system"
        LIGHT = "light"
        DARK = "dark"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="console_preference")
    time_zone = models.CharField(max_length=64, blank=True, validators=[validate_timezone],
                                 help_text="Empty: the install's TIME_ZONE.")
    theme = models.CharField(max_length=5, choices=Theme.choices, default=Theme.AUTO)

    def __str__(self) -> str:
        return f"{self.user}: {self.time_zone or 'default zone'}, {self.theme}"
