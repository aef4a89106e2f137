"""The terminal operator's commands: each happy path, and every bad input refused with a
clear CommandError that leaves the database exactly as it was."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from scheduler.models import Cluster, Event, Job, Member, Schedule, Task, TaskLog


def run(*args, **options) -> str:
    """call_command, returning what it wrote to stdout (stderr is kept on `run.stderr`)."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    run.stderr = err.getvalue()
    return out.getvalue()


def snapshot() -> dict:
    """Every row of the tables a command may change, to prove that it changed nothing."""
    return {model.__name__: list(model.objects.order_by("pk").values())
            for model in (Cluster, Job, Schedule, Task, Event, Member)}


def refused(*args, message: str) -> str:
    """Run a command that must fail with `message` and change nothing; return the error."""
    before = snapshot()
    with pytest.raises(CommandError) as info:
        run(*args)
    assert message in str(info.value)
    assert snapshot() == before
    return str(info.value)


def add_member(cluster, name, state="active", **kw) -> Member:
    defaults = {"mode": "single", "host": "host-1", "pid": 4242, "version": "0.1.0"}
    return Member.objects.create(cluster=cluster, name=name, state=state, **{**defaults, **kw})


def add_task(job, state="succeeded", **kw) -> Task:
    now = timezone.now()
    return Task.objects.create(cluster_id=job.cluster_id, job=job, trigger="manual",
                               state=state, scheduled_for=now, **kw)


@pytest.fixture
def schedule(shell_job) -> Schedule:
    schedule = Schedule(job=shell_job, kind="cron", cron="0 * * * *")
    schedule.full_clean()
    schedule.save()
    return schedule


# ---------------------------------------------------------------------------- addjob


def test_addjob_creates_the_cluster_and_the_job(db):
    out = run("addjob", "--cluster", "prod", "backup", "--shell", "pg_dump app > /tmp/x",
              "--params", '{"keep": 7, "tags": ["db"]}', "--timeout", "600", "--retries", "2",
              "--max-parallel", "1", "--overlap", "skip", "--affinity", "db-host")
    assert "cluster prod created" in out and "job backup added to cluster prod" in out
    job = Job.objects.get(cluster__name="prod", name="backup")
    assert (job.kind, job.command, job.parameters) == ("shell", "pg_dump app > /tmp/x",
                                                       {"keep": 7, "tags": ["db"]})
    assert (job.timeout_seconds, job.max_retries, job.overlap_policy) == (600, 2, "skip")
    assert not job.stateful and job.affinity == "db-host"
    created = Event.objects.get(kind="job.created", job=job)
    assert created.source == "cli"


def test_addjob_adds_a_python_job_to_an_existing_cluster(cluster):
    out = run("addjob", "--cluster", "test", "report", "--python", "scheduler.demo_jobs:report")
    assert "created" not in out
    assert Job.objects.get(cluster=cluster, name="report").kind == "python"


def test_addjob_gives_a_python_job_a_process_of_its_own(cluster):
    run("addjob", "--cluster", "test", "untrusted", "--python", "tests.jobs:die",
        "--isolation", "process")
    assert Job.objects.get(cluster=cluster, name="untrusted").isolation == "process"


def test_addjob_sends_a_celery_jobs_work_to_its_queue(cluster):
    out = run("addjob", "--cluster", "test", "reports", "--shell", "make report",
              "--executor", "celery", "--celery-queue", "reports.eu-1")
    assert "runs on a Celery worker, queue reports.eu-1" in out
    job = Job.objects.get(cluster=cluster, name="reports")
    assert (job.executor, job.celery_queue) == ("celery", "reports.eu-1")
    # No queue: Celery's default queue.
    out = run("addjob", "--cluster", "test", "plain", "--shell", "true", "--executor", "celery")
    assert "queue celery" in out
    assert Job.objects.get(cluster=cluster, name="plain").celery_queue == ""
    run("addjob", "--cluster", "test", "here", "--shell", "true")
    assert Job.objects.get(cluster=cluster, name="here").executor == "node"


@pytest.mark.parametrize(("args", "message"), [
    (["--executor", "celery", "--celery-queue", "two words"],
     "--celery-queue: 'two words' is not a valid Celery queue: 1-100 letters"),
    (["--executor", "celery", "--celery-queue", "a/b"], "'a/b' is not a valid Celery queue"),
    (["--executor", "celery", "--celery-queue", "x" * 101],
     "--celery-queue: Ensure this value has at most 100 characters"),
    (["--executor", "celery", "--celery-queue", "amq.reports"],
     "--celery-queue: 'amq.reports' is not a valid Celery queue: RabbitMQ reserves"),
    (["--celery-queue", "reports"],
     "--celery-queue: Only a job of executor celery has a Celery queue"),
    (["--executor", "cloud"], "argument --executor: invalid choice: 'cloud'"),
])
def test_addjob_refuses_a_bad_executor_or_celery_queue(cluster, args, message):
    error = refused("addjob", "--cluster", "test", "reports", "--shell", "true", *args,
                    message=message)
    assert "\n" not in error.strip()


@pytest.mark.parametrize(("args", "message"), [
    (["--shell", "true", "--params", "{bad"],
     "--params: Invalid JSON: Expecting property name enclosed in double quotes"),
    (["--shell", "true", "--params", "[1, 2]"], "--params: A data map must be a JSON object"),
    (["--shell", "true", "--params", '{"a": null}'], "'a': null is not allowed"),
    (["--python", "not a path"], "--shell/--python: A python job needs a dotted path"),
    (["--shell", "   "], "--shell/--python: A shell job needs a command line."),
    (["--python", "a.b:c", "--stateful", "--max-parallel", "2"],
     "--max-parallel: A stateful job never overlaps: max parallel must be 1."),
    (["--shell", "true", "--stateful"], "--stateful: A shell job leaves no data map to keep"),
    (["--shell", "true", "--max-parallel", "0"], "--max-parallel: Ensure this value is greater"),
    (["--shell", "true", "--affinity", "no spaces"], "--affinity: 'no spaces' is not a valid"),
    (["--shell", "true", "--overlap", "sometimes"], "invalid choice: 'sometimes'"),
    (["--shell", "true", "--isolation", "process"],
     "--isolation: Only python jobs have an isolation"),
    (["--python", "a.b:c", "--isolation", "vm"], "invalid choice: 'vm'"),
    ([], "one of the arguments --shell --python --task is required"),
])
def test_addjob_refuses_bad_input_and_creates_no_cluster(db, args, message):
    refused("addjob", "--cluster", "fresh", "job1", *args, message=message)
    assert not Cluster.objects.exists()


def test_addjob_refuses_a_bad_name_or_a_duplicate(shell_job):
    refused("addjob", "--cluster", "bad name", "x", "--shell", "true",
            message="--cluster: 'bad name' is not a valid name")
    refused("addjob", "--cluster", "test", "no/slash", "--shell", "true",
            message="NAME: 'no/slash' is not a valid name")
    refused("addjob", "--cluster", "test", "echo", "--shell", "true",
            message="Cluster 'test' already has a job named 'echo'.")


# ---------------------------------------------------------------------------- addschedule


def test_addschedule_cron_in_a_zone_prints_the_next_fires(shell_job):
    out = run("addschedule", "--cluster", "test", "echo", "--cron", "30 2 * * *",
              "--timezone", "Europe/Berlin", "--misfire", "skip", "--actor", "alice")
    schedule = Schedule.objects.get(job=shell_job)
    assert (schedule.kind, schedule.cron, schedule.timezone) == ("cron", "30 2 * * *",
                                                                 "Europe/Berlin")
    assert schedule.misfire_policy == "skip" and schedule.next_fire_at is not None
    assert f"schedule {schedule.pk} added to job echo: cron '30 2 * * *' Europe/Berlin" in out
    assert out.count("next: ") == 5 and "02:30:00 CE" in out
    assert Event.objects.get(kind="schedule.created", schedule=schedule).actor == "alice"


def test_addschedule_shows_a_dst_gap(shell_job):
    out = run("addschedule", "--cluster", "test", "echo", "--cron", "30 2 * * *",
              "--timezone", "Europe/Berlin", "--start", "2027-03-27T00:00")
    assert "DST gap: 02:30 does not exist on 2027-03-28" in out


def test_addschedule_interval_counts_from_its_start(shell_job):
    start = datetime(2030, 1, 1, tzinfo=UTC)
    run("addschedule", "--cluster", "test", "echo", "--interval", "90",
        "--start", start.isoformat(), "--end", "2030-01-02T00:00:00+00:00")
    schedule = Schedule.objects.get(job=shell_job)
    assert schedule.interval_seconds == 90 and schedule.anchor_at == start
    assert schedule.next_fire_at == start
    assert schedule.end_at == datetime(2030, 1, 2, tzinfo=UTC)


def test_addschedule_once_reads_a_time_without_offset_in_the_zone(shell_job):
    run("addschedule", "--cluster", "test", "echo", "--once", "2030-07-01T09:00",
        "--timezone", "Europe/Berlin")
    schedule = Schedule.objects.get(job=shell_job)
    assert schedule.kind == "once"
    assert schedule.run_at == datetime(2030, 7, 1, 7, 0, tzinfo=UTC)  # 09:00 CEST


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "61 * * * *"], "--cron: Invalid cron expression '61 * * * *'"),
    (["--cron", "* * *"], "expected 5 fields"),
    (["--cron", "0 3 * * *", "--timezone", "Mars/Base"],
     "--timezone: Unknown time zone 'Mars/Base'"),
    (["--cron", "0 3 * * *", "--timezone", "localtime"], "not an IANA zone name"),
    (["--interval", "0"], "--interval: Ensure this value is greater than or equal to 1."),
    (["--interval", "-5"], "--interval: Ensure this value is greater than or equal to"),
    (["--interval", "ten"], "invalid int value: 'ten'"),
    (["--once", "next tuesday"], "--once: 'next tuesday' is not an ISO 8601 date-time"),
    (["--cron", "0 3 * * *", "--start", "2030-01-02", "--end", "2030-01-01"],
     "--end: The end must be after the start."),
    (["--cron", "0 3 * * *", "--misfire", "later"], "invalid choice: 'later'"),
    ([], "one of the arguments --cron --interval --once is required"),
    (["--cron", "0 3 * * *", "--interval", "60"], "not allowed with argument"),
])
def test_addschedule_refuses_bad_input(shell_job, args, message):
    refused("addschedule", "--cluster", "test", "echo", *args, message=message)


def test_addschedule_refuses_an_unknown_cluster_or_job(shell_job):
    refused("addschedule", "--cluster", "nope", "echo", "--cron", "0 3 * * *",
            message="There is no cluster named 'nope' (clusters: test).")
    refused("addschedule", "--cluster", "test", "ghost", "--cron", "0 3 * * *",
            message="No job named 'ghost' in cluster 'test'")


# ---------------------------------------------------------------------------- pause / resume


def test_pausejob_and_resumejob_record_the_actor(cluster, shell_job):
    other = Job.objects.create(cluster=cluster, name="other", command="true")
    out = run("pausejob", "--cluster", "test", "echo", "other", "--actor", "bob")
    assert "job echo paused" in out and "job other paused" in out
    assert set(Job.objects.values_list("paused", flat=True)) == {True}
    assert Event.objects.filter(kind="job.paused", actor="bob").count() == 2
    out = run("pausejob", "--cluster", "test", "echo", "--actor", "bob")
    assert "job echo was already paused" in out
    out = run("resumejob", "--cluster", "test", "--all", "--actor", "bob")
    assert "job echo resumed" in out and "job other resumed" in out
    assert not Job.objects.filter(paused=True).exists()
    assert Event.objects.filter(kind="job.resumed", actor="bob", job=other).exists()


def test_the_events_of_commands_name_the_command_line_as_their_door(shell_job):
    run("addschedule", "--cluster", "test", "echo", "--cron", "0 3 * * *", "--actor", "bob")
    run("pausejob", "--cluster", "test", "echo", "--actor", "bob")
    run("runjob", "--cluster", "test", "echo", "--actor", "bob")
    schedule = Schedule.objects.get(job=shell_job)
    run("pauseschedule", str(schedule.pk), "--actor", "bob")
    events = Event.objects.filter(actor="bob")
    assert set(events.values_list("kind", flat=True)) == {
        "schedule.created", "job.paused", "job.run_now", "schedule.paused"}
    assert set(events.values_list("source", flat=True)) == {"cli"}


def test_pausejob_actor_defaults_to_the_os_user(shell_job, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    run("pausejob", "--cluster", "test", "echo")
    assert Event.objects.get(kind="job.paused").actor == "carol"


def test_pausejob_with_an_unknown_job_pauses_none(shell_job):
    refused("pausejob", "--cluster", "test", "echo", "ghost", "phantom",
            message="No job named 'ghost', 'phantom' in cluster 'test'")
    refused("pausejob", "--cluster", "nope", "echo", message="There is no cluster named 'nope'")
    refused("resumejob", "--cluster", "test", message="Give job names or --all (not both).")
    refused("resumejob", "--cluster", "test", "echo", "--all",
            message="Give job names or --all (not both).")
    refused("pausejob", "echo", message="--cluster NAME is required")


def test_pauseschedule_and_resumeschedule(schedule):
    out = run("pauseschedule", str(schedule.pk), "--actor", "dave")
    assert f"schedule {schedule.pk} of job echo (test) paused" in out
    schedule.refresh_from_db()
    assert schedule.paused
    out = run("resumeschedule", str(schedule.pk), "--actor", "dave")
    assert "resumed" in out
    schedule.refresh_from_db()
    assert not schedule.paused and schedule.next_fire_at is not None
    kinds = set(Event.objects.filter(actor="dave").values_list("kind", flat=True))
    assert kinds == {"schedule.paused", "schedule.resumed"}


def test_pauseschedule_with_an_unknown_id_pauses_none(schedule):
    refused("pauseschedule", str(schedule.pk), "999999", message="No schedule with id 999999.")
    refused("resumeschedule", "abc", message="invalid int value: 'abc'")


# ---------------------------------------------------------------------------- runjob


def test_runjob_queues_a_task_and_prints_its_id(shell_job):
    out = run("runjob", "--cluster", "test", "echo", "--params", '{"day": "2026-01-31"}',
              "--actor", "erin")
    task = Task.objects.get(job=shell_job)
    assert f"task {task.pk} queued for job echo in cluster test" in out
    assert (task.state, task.trigger, task.requested_by) == ("queued", "manual", "erin")
    assert task.parameters == {"day": "2026-01-31"}
    assert Event.objects.get(kind="job.run_now", task=task).actor == "erin"


def test_runjob_of_a_paused_job_says_it_waits(shell_job):
    shell_job.pause()
    run("runjob", "--cluster", "test", "echo")
    assert "job echo is paused: the task waits until it is resumed" in run.stderr


def test_runjob_wait_gives_up_at_the_deadline_without_a_member(shell_job):
    with pytest.raises(CommandError, match=r"task \d+ is still queued after 0.2 s"):
        run("runjob", "--cluster", "test", "echo", "--wait", "0.2")


@pytest.mark.parametrize(("args", "message"), [
    (["--params", "{'single': 'quotes'}"], "--params: Invalid JSON: Expecting property name"),
    (["--params", "null"], "--params: A data map must be a JSON object"),
    (["--params", '"text"'], "--params: A data map must be a JSON object"),
    (["--params", '{"a": {"b": NaN}}'], "a.b: NaN and infinity are not allowed."),
    (["--wait", "0"], "--wait: give a number of seconds greater than 0."),
])
def test_runjob_refuses_bad_input(shell_job, args, message):
    refused("runjob", "--cluster", "test", "echo", *args, message=message)


def test_runjob_refuses_an_unknown_cluster_or_job(shell_job):
    refused("runjob", "--cluster", "test", "ghost", message="No job named 'ghost'")
    refused("runjob", "--cluster", "ghost", "echo", message="There is no cluster named 'ghost'")


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_runjob_wait_follows_a_real_node_to_the_end(cluster, start_node):
    Job.objects.create(cluster=cluster, name="hello", command="echo hello from $OPSCENTER_JOB")
    Job.objects.create(cluster=cluster, name="fails", command="echo oops; exit 3")
    node = start_node("--cluster", "test", "--node", "n1", "--heartbeat-interval", "0.2")
    try:
        out = run("runjob", "--cluster", "test", "hello", "--wait", "60")
        assert "hello from hello" in out and "succeeded (exit code 0)" in out
        out = StringIO()
        with pytest.raises(CommandError) as info:
            call_command("runjob", "--cluster", "test", "fails", "--wait", "60", stdout=out,
                         stderr=StringIO())
        assert "failed (exit code 3)" in str(info.value)
        assert "oops" in out.getvalue()
    finally:
        node.signal(signal.SIGTERM)
        node.wait()


# ---------------------------------------------------------------------------- listings


def test_jobs_lists_schedules_next_fire_and_last_state(cluster, shell_job, schedule):
    Job.objects.create(cluster=cluster, name="idle", command="true", paused=True)
    add_task(shell_job, state="failed")
    out = run("jobs", "--cluster", "test")
    lines = out.splitlines()
    assert lines[0].split() == ["job", "kind", "paused", "schedules", "next", "fire", "last",
                                "task"]
    echo = next(line for line in lines if line.startswith("echo"))
    assert f"#{schedule.pk} cron '0 * * * *' UTC" in echo and "failed" in echo
    assert ":00:00 UTC" in echo
    idle = next(line for line in lines if line.startswith("idle"))
    assert "yes" in idle and "paused" in idle


def test_jobs_of_an_empty_or_unknown_cluster(cluster):
    assert "cluster test has no jobs" in run("jobs", "--cluster", "test")
    refused("jobs", "--cluster", "nope", message="There is no cluster named 'nope'")


def test_tasks_lists_newest_first_with_filters(cluster, shell_job):
    other = Job.objects.create(cluster=cluster, name="other", command="true")
    old = add_task(shell_job, state="succeeded", exit_code=0)
    new = add_task(shell_job, state="failed", exit_code=1)
    add_task(other, state="queued")
    rows = run("tasks", "--cluster", "test", "--job", "echo").splitlines()[2:]
    assert [int(r.split()[0]) for r in rows] == [new.pk, old.pk]
    rows = run("tasks", "--cluster", "test", "--state", "queued").splitlines()[2:]
    assert len(rows) == 1 and " other " in rows[0]
    rows = run("tasks", "--cluster", "test", "--limit", "1").splitlines()[2:]
    assert len(rows) == 1
    assert run("tasks", "--cluster", "test", "--state", "lost") == "no tasks\n"


def test_tasks_refuses_bad_input(shell_job):
    refused("tasks", "--cluster", "test", "--job", "ghost", message="No job named 'ghost'")
    refused("tasks", "--cluster", "test", "--state", "sleeping", message="invalid choice")
    refused("tasks", "--cluster", "test", "--limit", "0", message="--limit: give a number")


def test_tasklog_prints_the_log_and_the_state(shell_job):
    task = add_task(shell_job, state="succeeded", exit_code=0)
    TaskLog.objects.create(task=task, text="line 1\n")
    TaskLog.objects.create(task=task, text="line 2\n")
    assert run("tasklog", str(task.pk)) == "line 1\nline 2\n"
    assert f"task {task.pk} succeeded (exit code 0)" in run.stderr
    assert run("tasklog", str(task.pk), "--follow") == "line 1\nline 2\n"
    refused("tasklog", "999999", message="No task with id 999999.")


def test_cluster_shows_the_lease_holder_and_members(cluster):
    active = add_member(cluster, "alpha", mode="passive", role="primary")
    add_member(cluster, "beta", state="standby", mode="passive", role="backup",
               backup_precedence=1)
    add_member(cluster, "gamma", state="dead", mode="passive", role="backup",
               stop_reason="no heartbeat for 5 s", stopped_at=timezone.now())
    Cluster.objects.filter(pk=cluster.pk).update(
        mode="passive", lease_holder=active, lease_epoch=7,
        lease_expires_at=timezone.now() + timedelta(seconds=30))
    Member.objects.filter(name="beta").update(heartbeat_at=timezone.now() - timedelta(seconds=3))
    out = run("cluster", "--cluster", "test")
    assert "cluster test: mode passive" in out
    assert "lease: held by alpha (active), epoch 7, expires in" in out
    alpha = next(line for line in out.splitlines() if line.startswith("alpha"))
    assert alpha.startswith("alpha *") and "primary" in alpha
    beta = next(line for line in out.splitlines() if line.startswith("beta"))
    assert "standby" in beta and "3." in beta and "s ago" in beta
    assert "recently stopped or dead:" in out and "no heartbeat for 5 s" in out
    refused("cluster", "--cluster", "nope", message="There is no cluster named 'nope'")


# ---------------------------------------------------------------------------- switchover


def passive_cluster(cluster):
    Cluster.objects.filter(pk=cluster.pk).update(mode="passive")
    backup = add_member(cluster, "backup", mode="passive", role="backup")
    primary = add_member(cluster, "primary", state="standby", mode="passive", role="primary")
    Cluster.objects.filter(pk=cluster.pk).update(lease_holder=backup, lease_epoch=3)
    return backup, primary


def test_switchover_asks_for_the_primary_by_default(cluster):
    _, primary = passive_cluster(cluster)
    out = run("switchover", "--cluster", "test", "--actor", "frank")
    assert "switch-over to primary requested" in out
    cluster.refresh_from_db()
    assert cluster.handover_to_id == primary.pk
    assert Event.objects.get(kind="switchover.requested").actor == "frank"


def test_switchover_refusals_change_nothing(cluster):
    refused("switchover", "--cluster", "test",
            message="Switch-over refused: cluster 'test' is not a passive cluster.")
    passive_cluster(cluster)
    refused("switchover", "--cluster", "test", "--to", "nobody",
            message="'nobody' is not a live standby member of 'test' (standby members: "
                    "primary)")
    refused("switchover", "--cluster", "ghost", message="there is no cluster named 'ghost'")


# ---------------------------------------------------------------------------- hostile input

@pytest.mark.parametrize(("args", "message"), [
    (["addjob", "--cluster", "test", "bad\n", "--shell", "x"], "'bad\\n' is not a valid name"),
    (["addjob", "--cluster", "c\n", "ok", "--shell", "x"], "--cluster: 'c\\n' is not a valid"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--affinity", "a\n"],
     "--affinity: 'a\\n' is not a valid name"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x\x00y"],
     "--shell: the value contains a NUL character"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x\ud800y"],
     "--shell: the value contains invalid Unicode (a lone surrogate)"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params", "[" * 5000],
     "JSON nested more than 32 levels deep"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params", "[" * 100_000],
     "A data map is at most 64 KiB of JSON"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params",
      '{"a": ' + "[" * 40 + "]" * 40 + "}"], "nested more than 32 levels deep"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params",
      '{"a": "' + "x" * 70_000 + '"}'], "A data map is at most 64 KiB of JSON"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params", '{"a": "\\u0000"}'],
     "--params: a: the text contains a NUL character"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params", '{"\\ud800": 1}'],
     "lone surrogate"),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--params", '{"a": ' + "9" * 5000 + "}"],
     "Invalid JSON: a number with too many digits."),
    (["addjob", "--cluster", "test", "ok", "--shell", "x", "--timeout", "99999999999"],
     "--timeout: '99999999999' is too large"),
    (["tasks", "--cluster", "test", "--limit", "1e23"], "invalid int value: '1e23'"),
    (["tasks", "--cluster", "test", "--limit", "9" * 30], "is too large"),
    (["tasks", "--cluster", "test", "--job", "\ud800"], "JOB: the value contains invalid Unicode"),
    (["pausejob", "--cluster", "test", "\ud800"], "JOB: the value contains invalid Unicode"),
    (["cluster", "--cluster", "\ud800"], "--cluster: the value contains invalid Unicode"),
    (["runjob", "--cluster", "test", "echo", "--wait", "nan"], "give a finite number of seconds"),
    (["runjob", "--cluster", "test", "echo", "--wait", "inf"], "give a finite number of seconds"),
    (["auditfires", "--cluster", "test", "--since", "99999999999d"],
     "--since: '99999999999d' reaches back before the year 1"),
    (["addschedule", "--cluster", "test", "echo", "--cron", "* * * * *", "--start",
      "9999-12-31T23:59:00"], "--start: Give a date between the years 2 and 9998."),
    (["addschedule", "--cluster", "test", "echo", "--once", "0001-01-01T00:00:00",
      "--timezone", "Europe/Berlin"], "--once: Give a date between the years 2 and 9998."),
    (["addschedule", "--cluster", "test", "echo", "--interval", "99999999999"], "is too large"),
    (["tasklog", "9" * 20], "is too large"),
])
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(shell_job, args, message):
    error = refused(*args, message=message)
    assert "\n" not in error
