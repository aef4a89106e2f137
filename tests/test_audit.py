"""The fire audit (scheduler/audit.py, `manage.py auditfires`): every owed fire gets exactly one
verdict, set against the ledger and the event log.

Clusters are driven as real processes (quiet run, a member killed mid-run) or in this process
(pauses, outages, edits); other ledger situations are built with the ORM, with times moved in
SQL where that is simpler. On PostgreSQL every audit runs both ways (set-based SQL and the
per-fire stream) and the two must agree to the last detail.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from scheduler import audit as audits
from scheduler.audit import (
    BEHIND,
    DOUBLE,
    DOWN,
    MISFIRE,
    MISSED,
    NOT_YET,
    PAUSED,
    RAN,
    RERUN,
    UNEXPECTED,
)
from scheduler.clock import db_now
from scheduler.models import Cluster, Event, Job, Member, MisfireRecord, Schedule, Task
from tests.conftest import add_job, is_postgres, wait_for
from tests.test_node import drive, finished, make_node

TX = pytest.mark.django_db(transaction=True)
FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5", "--takeover-stagger", "0.5"]
S = timedelta(seconds=1)


# ------------------------------------------------------------------------------------ helpers




def add_schedule(job, **kw) -> Schedule:
    schedule = Schedule(job=job, **kw)
    schedule.full_clean()
    schedule.save()
    return schedule


def in_force_from(schedule: Schedule, at: datetime, version: int | None = None) -> None:
    """Move the schedule's latest definition event (and, for its first, its creation) to `at`,
    as if it had been saved then; an interval's anchor moves with it."""
    events = Event.objects.filter(schedule=schedule, kind__in=["schedule.created",
                                                               "schedule.changed"])
    event = events.get(data__version=version) if version else events.latest("id")
    data = event.data
    if data["definition"]["kind"] == "interval" and not data["definition"]["start_at"]:
        data["definition"]["anchor_at"] = at.isoformat()
        Schedule.objects.filter(pk=schedule.pk).update(anchor_at=at)
    Event.objects.filter(pk=event.pk).update(created_at=at, data=data)
    if event.kind == "schedule.created":
        Schedule.objects.filter(pk=schedule.pk).update(created_at=at)
    schedule.refresh_from_db()


def ledger(schedule, times, member=None, late=0.05, state="succeeded", **kw) -> list[Task]:
    """Tasks as a member writes them: one per fire, started `late` seconds after it."""
    late = timedelta(seconds=late)
    return Task.objects.bulk_create([
        Task(cluster_id=schedule.cluster_id, job_id=schedule.job_id, schedule=schedule,
             scheduled_for=t, attempt=kw.get("attempt", 1), trigger=kw.get("trigger", "schedule"),
             state=state, member=member,
             started_at=None if state in ("queued", "skipped") else t + late,
             finished_at=None if state in ("queued", "running") else t + late + S / 10,
             retry_of=kw.get("retry_of"))
        for t in times])


def member(cluster, name) -> Member:
    return Member.objects.create(cluster=cluster, name=name, mode="single", host="h", pid=1,
                                 version="x", state="active")


def every(start: datetime, step: timedelta, n: int) -> list[datetime]:
    return [start + step * i for i in range(n)]


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def comparable(result) -> dict:
    return {"counts": result.counts, "lateness": result.lateness, "members": result.members,
            "warnings": result.warnings,
            "fires": [f.to_json() for f in result.exceptions()]}


def audit(cluster, since, until, job=None, now=None):
    """The audit of this database; on PostgreSQL the set-based audit and the per-fire stream
    must agree exactly (counts, lateness figures, members, every record)."""
    now = now or db_now()
    result = audits.audit(cluster, since, until, job=job, now=now)
    if is_postgres():
        assert result.method == "sql"
        streamed = audits.audit(cluster, since, until, job=job, now=now, method="python")
        assert comparable(streamed) == comparable(result)
    else:
        assert result.method == "python"
    return result


def fires(result, verdict=None, job=None) -> list:
    return [f for f in result.exceptions()
            if (verdict is None or f.verdict == verdict) and (job is None or f.job == job)]


def command(*args) -> tuple[str, CommandError | None]:
    """Run auditfires; return what it printed and the CommandError it ended with, if any."""
    out, err = StringIO(), StringIO()
    try:
        call_command("auditfires", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def stop(node) -> None:
    node.stopping = True
    node.shutdown()


def tick_for(node, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        node.tick()


def live(name):
    return Member.objects.filter(cluster__name="test", name=name,
                                 state__in=Member.LIVE_STATES).first()


# ------------------------------------------------------------------------------------ clean runs


@pytest.mark.processes
@TX
def test_a_quiet_cluster_run_audits_clean(cluster, start_node):
    ticks = [add_schedule(add_job(cluster, f"tick{i}"), kind="interval", interval_seconds=1)
             for i in range(3)]
    add_schedule(add_job(cluster, "two"), kind="interval", interval_seconds=2)
    add_schedule(add_job(cluster, "minutely"), kind="cron", cron="* * * * *")
    nodes = [start_node("--cluster", "test", "--node", n, "--distributed-orders", *FAST)
             for n in ("a", "b")]
    wait_for(lambda: live("a") and live("b"), timeout=30, message="members up")
    since = db_now()
    # Six fires of tick0 done: the window below is then over 4 s long, which holds at least
    # 4 fires of every one-second schedule and 2 of the two-second one, whatever the anchors.
    wait_for(lambda: Task.objects.filter(schedule=ticks[0], scheduled_for__gt=since,
                                         state="succeeded").count() >= 6, timeout=30)
    until = db_now() - S  # every fire before this was taken while both members ran
    for node in nodes:
        node.signal(signal.SIGTERM)
        assert node.wait() == 0, node.output()
    result = audit(cluster, since, until)
    assert result.counts[MISSED] == result.counts[DOUBLE] == 0, list(result.exceptions())
    assert result.counts[UNEXPECTED] == 0
    assert result.counts[RAN] >= 3 * 4 + 2
    assert result.counts[RAN] == result.owed  # quiet: nothing else
    assert not list(result.exceptions())
    assert result.lateness["count"] == result.counts[RAN]
    assert 0 <= result.lateness["p50"] <= result.lateness["p99"] <= result.lateness["max"] < 5
    assert {m["member"] for m in result.members} <= {"a", "b"}
    assert sum(m["first_attempts"] for m in result.members) == result.counts[RAN]
    out, error = command("--cluster", "test", "--since", since.isoformat(), "--until",
                         until.isoformat())
    assert error is None, out
    assert "Every owed fire plainly ran." in out
    assert f"ran         {result.counts[RAN]}" in out


@pytest.mark.processes
@pytest.mark.postgres
@TX
@pytest.mark.skipif(not is_postgres(), reason="a cluster with a killed member needs PostgreSQL")
def test_a_member_killed_mid_run_still_audits_clean(cluster, start_node):
    ticks = [add_schedule(add_job(cluster, f"tick{i}"), kind="interval", interval_seconds=1)
             for i in range(4)]
    slow = add_schedule(add_job(cluster, "slow", kind="shell", command="sleep 2",
                                max_parallel=10), kind="interval", interval_seconds=1)
    nodes = {n: start_node("--cluster", "test", "--node", n, "--distributed-orders", *FAST)
             for n in ("a", "b", "c")}
    wait_for(lambda: all(live(n) for n in nodes), timeout=30, message="members up")
    since = db_now()
    wait_for(lambda: Task.objects.filter(schedule=ticks[0], scheduled_for__gt=since,
                                         state="succeeded").count() >= 3, timeout=30)
    running = wait_for(lambda: Task.objects.filter(schedule=slow, state="running",
                                                   scheduled_for__gt=since).first(), timeout=10)
    victim = running.member.name
    nodes[victim].signal(signal.SIGKILL)
    wait_for(lambda: Member.objects.filter(name=victim, state="dead").exists(), timeout=15,
             message="victim declared dead")
    lost = wait_for(lambda: list(Task.objects.filter(member__name=victim, state="lost")),
                    timeout=10, message="its tasks lost")
    wait_for(lambda: all(Task.objects.filter(retry_of=t, state="succeeded").exists()
                         for t in lost), timeout=20, message="recovered")
    time.sleep(1.5)
    until = db_now() - S
    for name, node in nodes.items():
        if name != victim:
            node.signal(signal.SIGTERM)
            assert node.wait() == 0, node.output()
    result = audit(cluster, since, until)
    assert result.counts[MISSED] == result.counts[DOUBLE] == 0, [
        f for f in result.exceptions() if f.verdict in (MISSED, DOUBLE)]
    assert result.counts[UNEXPECTED] == 0
    reruns = fires(result, RERUN)
    assert {f.due for f in reruns} == {t.scheduled_for for t in lost
                                       if since <= t.scheduled_for < until}
    for fire in reruns:
        assert [r.attempt for r in fire.rows] == [1, 2]
        assert fire.rows[0].member == victim and fire.rows[0].state == "lost"
        assert fire.rows[1].trigger == "recovery" and fire.rows[1].member != victim
        assert fire.rows[1].state == "succeeded"
        assert fire.lateness is not None
    # Every other fire of the window ran (or was recorded as a misfire while the victim's
    # claim was in doubt): nothing is unaccounted for.
    assert result.counts[RAN] + result.counts[RERUN] + result.counts[MISFIRE] == result.owed
    out, error = command("--cluster", "test", "--since", since.isoformat(), "--until",
                         until.isoformat())
    assert error is None, out
    assert "re-run" in out and victim in out


# ------------------------------------------------------------------------------------ gaps


@TX
def test_fires_deleted_from_the_ledger_by_hand_are_missed(cluster):
    node = make_node()
    try:
        job = add_job(cluster, "tick")
        schedule = add_schedule(job, kind="interval", interval_seconds=1, misfire_grace_seconds=1)
        drive(node, finished(job, 6), message="six runs")
        until = db_now()
    finally:
        stop(node)
    since = schedule.anchor_at
    clean = audit(cluster, since, until)
    assert clean.counts[MISSED] == 0 and clean.counts[RAN] >= 6
    deleted = list(Task.objects.filter(schedule=schedule).order_by("scheduled_for")[2:4])
    Task.objects.filter(pk__in=[t.pk for t in deleted]).delete()
    # Past the time they might still have started in (misfire grace + slack).
    wait_for(lambda: db_now() > deleted[-1].scheduled_for + S + audits.SLACK, timeout=10)
    result = audit(cluster, since, until)
    missed = fires(result, MISSED)
    assert [f.due for f in missed] == [t.scheduled_for for t in deleted]
    assert all(f.detail == "no task and no record why" and not f.rows for f in missed)
    assert result.counts[MISSED] == 2 and result.counts[RAN] == clean.counts[RAN] - 2
    out, error = command("--cluster", "test", "--since", since.isoformat(), "--until",
                         until.isoformat())
    assert error is not None and error.returncode == 1
    assert "2 MISSED" in str(error)
    assert out.count(" MISSED ") == 2
    assert audits.text_time(deleted[0].scheduled_for) in out


@pytest.mark.django_db
def test_missed_fires_while_no_member_ran_say_so(cluster):
    job = add_job(cluster, "tick")
    schedule = add_schedule(job, kind="interval", interval_seconds=60, misfire_grace_seconds=1)
    t0 = utc(2026, 11, 1, 12, 0)
    in_force_from(schedule, t0)
    minute = timedelta(minutes=1)
    m1, m2 = member(cluster, "m1"), member(cluster, "m2")
    Member.objects.filter(pk=m1.pk).update(started_at=t0 - S, state="stopped",
                                           stopped_at=t0 + 4.5 * minute)
    Member.objects.filter(pk=m2.pk).update(started_at=t0 + 7.5 * minute, state="dead",
                                           heartbeat_at=t0 + 9.5 * minute,
                                           stopped_at=t0 + 9.6 * minute)
    ledger(schedule, every(t0, minute, 5), member=m1)  # 12:00 to 12:04
    ledger(schedule, [t0 + 8 * minute, t0 + 9 * minute], member=m2)
    result = audit(cluster, t0, t0 + 12 * minute)
    missed = fires(result, MISSED)
    assert [f.due for f in missed] == [t0 + k * minute for k in (5, 6, 7, 10, 11)]
    T = audits.text_time
    stopped = (f"no task and no record why: no member of the cluster was running from "
               f"{T(t0 + 4.5 * minute)} to {T(t0 + 7.5 * minute)} (the last, m1, stopped at "
               f"{T(t0 + 4.5 * minute)})")
    died = (f"no task and no record why: no member of the cluster was running from "
            f"{T(t0 + 9.5 * minute)} and none has joined since (the last, m2, was declared "
            f"dead; its last heartbeat at {T(t0 + 9.5 * minute)})")
    assert [f.detail for f in missed] == [stopped] * 3 + [died] * 2
    assert result.counts[RAN] == 7


@TX
def test_a_paused_job_and_a_paused_schedule_show_as_paused(cluster):
    node = make_node()
    try:
        job = add_job(cluster, "paused-job")
        add_schedule(job, kind="interval", interval_seconds=1)
        other = add_job(cluster, "paused-schedule")
        schedule = add_schedule(other, kind="interval", interval_seconds=1)
        since = db_now()
        drive(node, lambda: finished(job, 2)() and finished(other, 2)(), message="runs")
        job.pause(actor="bob")
        schedule.pause(actor="carol")
        tick_for(node, 3.5)
        job.resume(actor="alice")
        schedule.resume(actor="dave")
        resumed = db_now()
        drive(node, lambda: Task.objects.filter(job__in=[job, other], scheduled_for__gt=resumed,
                                                state="succeeded").count() >= 4)
        until = db_now()
    finally:
        stop(node)
    result = audit(cluster, since, until)
    assert result.counts[MISSED] == result.counts[DOUBLE] == result.counts[UNEXPECTED] == 0
    by_job = fires(result, PAUSED, "paused-job")
    by_schedule = fires(result, PAUSED, "paused-schedule")
    assert len(by_job) >= 3 and len(by_schedule) >= 3
    assert {f.record["by"] for f in by_job} == {"bob"}
    assert {f.record["resumed_by"] for f in by_job} == {"alice"}
    assert {(f.record["paused"], f.record["by"]) for f in by_schedule} == {("schedule", "carol")}
    pause = Event.objects.get(kind="job.paused")
    resume = Event.objects.get(kind="job.resumed")
    assert by_job[0].record["from"] == pause.created_at.isoformat()
    assert by_job[0].record["to"] == resume.created_at.isoformat()
    assert "job paused by bob from" in by_job[0].detail
    # Every paused fire is one no task was started for, and they are the whole stretch.
    assert not Task.objects.filter(schedule__job=job, scheduled_for__in=[f.due for f in by_job])
    assert all(b.due - a.due == S for a, b in zip(by_job, by_job[1:], strict=False))
    assert by_job[-1].due < resume.created_at + audits.RESUME_SLACK


@TX
def test_a_misfire_after_an_outage_shows_its_policy(cluster):
    node = make_node()
    try:
        once = add_schedule(add_job(cluster, "run-once"), kind="interval", interval_seconds=1,
                            misfire_grace_seconds=1, misfire_policy="run_once")
        skip = add_schedule(add_job(cluster, "skip"), kind="interval", interval_seconds=1,
                            misfire_grace_seconds=1, misfire_policy="skip")
        limit = add_schedule(add_job(cluster, "run-all"), kind="interval", interval_seconds=1,
                             misfire_grace_seconds=1, misfire_policy="run_all", run_all_limit=2)
        since = db_now()
        drive(node, lambda: all(Task.objects.filter(schedule=s).count() >= 2
                                for s in (once, skip, limit)), message="first runs")
    finally:
        stop(node)
    time.sleep(5)  # the outage: no member at all
    node = make_node()
    try:
        drive(node, lambda: MisfireRecord.objects.count() == 3, message="misfires recorded")
        back = db_now()
        drive(node, lambda: all(Task.objects.filter(schedule=s, scheduled_for__gt=back,
                                                    state="succeeded").exists()
                                for s in (once, skip, limit)), message="running again")
        until = db_now()
    finally:
        stop(node)
    result = audit(cluster, since, until)
    assert result.counts[MISSED] == result.counts[DOUBLE] == result.counts[UNEXPECTED] == 0
    for schedule, reason in ((once, "run_once"), (skip, "skip"), (limit, "run_all_limit")):
        record = MisfireRecord.objects.get(schedule=schedule)
        misfired = fires(result, MISFIRE, schedule.job.name)
        assert len(misfired) == record.fire_count >= 2
        assert {f.record["misfire_record"] for f in misfired} == {record.pk}
        assert {(f.record["policy"], f.record["reason"]) for f in misfired} == {
            (schedule.misfire_policy, reason)}
        assert misfired[0].due == record.first_fire_at and misfired[-1].due == record.last_fire_at
    # After the record, the schedule ran on (the fire that stood in for a coalesced range,
    # or the first one on time).
    coalesced = MisfireRecord.objects.get(schedule=once)
    assert Task.objects.filter(schedule=once, scheduled_for=coalesced.last_fire_at + S).exists()
    out, error = command("--cluster", "test", "--since", since.isoformat(), "--until",
                         until.isoformat())
    assert error is None, out
    assert "coalesced into one run by misfire policy run_once" in out
    assert "skipped by misfire policy skip" in out


# ------------------------------------------------------------------------------------ definitions


@TX
def test_an_interval_edited_mid_run_is_audited_against_each_side(cluster):
    node = make_node()
    try:
        job = add_job(cluster, "edited")
        schedule = add_schedule(job, kind="interval", interval_seconds=1)
        since = db_now()
        drive(node, finished(job, 4))
        n = Task.objects.filter(job=job).count()
        # Right after a fire was taken and became due (a member takes a fire up to 50 ms
        # before its instant), so no fire of the old definition is due while saving.
        drive(node, lambda: Task.objects.filter(job=job).count() > n)
        taken = Task.objects.filter(job=job).latest("scheduled_for").scheduled_for
        drive(node, lambda: db_now() >= taken)
        schedule.interval_seconds = 2
        schedule.save()
        edited = schedule.anchor_at
        drive(node, lambda: Task.objects.filter(job=job, scheduled_for__gte=edited,
                                                state="succeeded").count() >= 3)
        until = db_now()
    finally:
        stop(node)
    times = list(Task.objects.filter(job=job).order_by("scheduled_for")
                 .values_list("scheduled_for", flat=True))
    before = [t for t in times if t < edited]
    after = [t for t in times if t >= edited]
    assert {b - a for a, b in zip(before, before[1:], strict=False)} == {S}
    assert {b - a for a, b in zip(after, after[1:], strict=False)} == {2 * S}
    result = audit(cluster, since, until)
    # Against one expression only, the 1 s side would have UNEXPECTED fires (2 s grid) or
    # the 2 s side MISSED ones (1 s grid).
    assert result.counts[MISSED] == result.counts[UNEXPECTED] == result.counts[DOUBLE] == 0
    assert result.counts[RAN] == len([t for t in times if since <= t < until])


def test_a_cron_edited_mid_window_is_audited_against_the_old_then_the_new(cluster):
    job = add_job(cluster, "cron-edit")
    schedule = add_schedule(job, kind="cron", cron="*/5 * * * *")
    in_force_from(schedule, utc(2026, 1, 5, 9, 0, 0, 1))
    schedule.cron = "*/7 * * * *"
    schedule.save()
    in_force_from(schedule, utc(2026, 1, 5, 10, 32, 10))
    old = [utc(2026, 1, 5, h, m) for h in (9, 10) for m in range(0, 60, 5)
           if (h, m) >= (9, 5) and (h, m) <= (10, 30)]
    new = [utc(2026, 1, 5, 10, m) for m in (35, 42, 49, 56)]
    ledger(schedule, old + new)
    since, until = utc(2026, 1, 5, 10, 0), utc(2026, 1, 5, 11, 0)
    result = audit(cluster, since, until)
    assert result.counts[RAN] == 7 + 4 and result.owed == 11
    assert not list(result.exceptions())
    # The old expression after the edit, the new one before it: not owed.
    ledger(schedule, [utc(2026, 1, 5, 10, 40), utc(2026, 1, 5, 10, 28)])
    Task.objects.filter(schedule=schedule, scheduled_for=utc(2026, 1, 5, 10, 42)).delete()
    result = audit(cluster, since, until)
    assert [(f.due, f.verdict) for f in result.exceptions()] == [
        (utc(2026, 1, 5, 10, 28), UNEXPECTED), (utc(2026, 1, 5, 10, 40), UNEXPECTED),
        (utc(2026, 1, 5, 10, 42), MISSED)]
    assert "definition in force does not produce" in fires(result, UNEXPECTED)[0].detail
    # A window before the schedule existed owes nothing; its tasks there are unexpected.
    ledger(schedule, [utc(2026, 1, 5, 8, 55)])
    early = audit(cluster, utc(2026, 1, 5, 8, 0), utc(2026, 1, 5, 9, 1))
    assert early.owed == 0
    assert [(f.due, f.verdict) for f in early.exceptions()] == [
        (utc(2026, 1, 5, 8, 55), UNEXPECTED)]
    assert "before the schedule's first definition" in fires(early, UNEXPECTED)[0].detail


@pytest.mark.parametrize(("zone", "cron", "day", "expected"), [
    # Europe/Berlin springs forward on 2025-03-30 (02:00 CET -> 03:00 CEST): 23 hours.
    ("Europe/Berlin", "0 * * * *", (2025, 3, 30),
     every(utc(2025, 3, 29, 23), timedelta(hours=1), 23)),
    # 02:30 does not exist that day: it fires at the end of the gap, 03:00 CEST = 01:00 UTC.
    ("Europe/Berlin", "30 2 * * *", (2025, 3, 30), [utc(2025, 3, 30, 1)]),
    # ... and falls back on 2025-10-26 (03:00 CEST -> 02:00 CET): 25 hours.
    ("Europe/Berlin", "0 * * * *", (2025, 10, 26),
     every(utc(2025, 10, 25, 22), timedelta(hours=1), 25)),
    # America/New_York: 2025-03-09 springs forward (02:00 EST -> 03:00 EDT).
    ("America/New_York", "30 2 * * *", (2025, 3, 9), [utc(2025, 3, 9, 7)]),
    ("America/New_York", "*/30 * * * *", (2025, 3, 9),
     every(utc(2025, 3, 9, 5), timedelta(minutes=30), 46)),
    # 2025-11-02 falls back (02:00 EDT -> 01:00 EST): a fixed 01:30 fires once, the first.
    ("America/New_York", "30 1 * * *", (2025, 11, 2), [utc(2025, 11, 2, 5, 30)]),
    ("America/New_York", "*/30 * * * *", (2025, 11, 2),
     every(utc(2025, 11, 2, 4), timedelta(minutes=30), 50)),
])
def test_dst_days_in_two_zones(cluster, zone, cron, day, expected):
    from zoneinfo import ZoneInfo

    job = add_job(cluster, "dst")
    schedule = add_schedule(job, kind="cron", cron=cron, timezone=zone)
    in_force_from(schedule, utc(2025, 1, 1))
    local = ZoneInfo(zone)
    since = datetime(*day, tzinfo=local).astimezone(UTC)
    until = (datetime(*day, tzinfo=local) + timedelta(days=1)).astimezone(UTC)
    tasks = ledger(schedule, expected, late=0.2)
    result = audit(cluster, since, until)
    assert result.counts[RAN] == result.owed == len(expected), list(result.exceptions())
    assert not list(result.exceptions())
    assert result.lateness == {"count": len(expected), "p50": 0.2, "p99": 0.2, "max": 0.2}
    # A fire an hour off (the wall time read in the other offset) is not owed, and the one it
    # stood for is missed.
    Task.objects.filter(pk=tasks[-1].pk).update(scheduled_for=expected[-1] + timedelta(hours=1))
    if expected[-1] + timedelta(hours=1) >= until:
        Task.objects.filter(pk=tasks[-1].pk).update(scheduled_for=expected[-1] - timedelta(
            minutes=59))
    result = audit(cluster, since, until)
    assert [f.verdict for f in result.exceptions()] in ([MISSED, UNEXPECTED],
                                                        [UNEXPECTED, MISSED])
    assert fires(result, MISSED)[0].due == expected[-1]


# ------------------------------------------------------------------------------------ the ledger


def test_recorded_decisions_retries_and_the_unexpected(cluster):
    job = add_job(cluster, "mixed")
    schedule = add_schedule(job, kind="interval", interval_seconds=10)
    start = utc(2026, 2, 1, 12, 0, 0)
    in_force_from(schedule, start)
    a, b = member(cluster, "a"), member(cluster, "b")
    due = every(start, 10 * S, 12)
    ledger(schedule, due[:3], member=a)
    ledger(schedule, [due[3]], state="skipped")                 # overlap policy skip
    failed = ledger(schedule, [due[4]], member=a, state="failed")[0]
    ledger(schedule, [due[4]], member=b, attempt=2, trigger="retry", retry_of=failed, late=20)
    lost = ledger(schedule, [due[5]], member=a, state="lost")[0]
    ledger(schedule, [due[5]], member=b, attempt=2, trigger="recovery", retry_of=lost, late=9)
    ledger(schedule, [due[6]], member=a, state="lost")          # lost, job asks no recovery
    ledger(schedule, [due[7]], member=b, late=1.5)
    ledger(schedule, [due[8] + S / 2], member=b)                 # off the grid
    # due[8]: nothing; due[9..11]: ran
    ledger(schedule, due[9:], member=a)
    MisfireRecord.objects.create(cluster=cluster, schedule=schedule, first_fire_at=due[8],
                                 last_fire_at=due[8], fire_count=1, policy="skip",
                                 reason="skip", member=b)
    now = due[-1] + 60 * S
    result = audit(cluster, start, due[-1] + S, now=now)
    got = [(f.due, f.verdict) for f in result.exceptions()]
    assert got == [(due[3], MISFIRE), (due[4], RAN), (due[5], RERUN), (due[6], RAN),
                   (due[8], MISFIRE), (due[8] + S / 2, UNEXPECTED)]
    skipped, retried, rerun, unrecovered, misfire, odd = result.exceptions()
    assert skipped.record["record"] == "overlap skip" and "overlap skip" in skipped.detail
    assert retried.attempts == 2 and retried.state == "succeeded" and retried.member == "a"
    assert retried.to_json()["tasks"][1]["trigger"] == "retry"
    assert rerun.attempts == 2 and "lost and recovered" in rerun.detail
    assert unrecovered.state == "lost" and "not recovered" in unrecovered.detail
    assert misfire.record["reason"] == "skip" and misfire.record["member"] == "b"
    assert result.counts == {RAN: 9, RERUN: 1, MISFIRE: 2, PAUSED: 0, NOT_YET: 0, BEHIND: 0,
                             DOWN: 0, MISSED: 0, DOUBLE: 0, UNEXPECTED: 1}
    # Lateness: first attempts that started (not the skipped one, not the off-grid one).
    assert result.lateness["count"] == 10
    assert result.lateness["max"] == 1.5
    members = {m["member"]: m for m in result.members}
    assert members["a"]["first_attempts"] == 9 and members["a"]["later_attempts"] == 0
    assert members["b"]["first_attempts"] == 1 and members["b"]["later_attempts"] == 2
    assert members["b"]["p50"] == 1.5


def test_double_fires_are_found_even_without_the_unique_fire_key(cluster):
    job = add_job(cluster, "twice")
    schedule = add_schedule(job, kind="interval", interval_seconds=1)
    start = utc(2026, 2, 1, 12, 0, 0)
    in_force_from(schedule, start)
    a, b = member(cluster, "a"), member(cluster, "b")
    due = every(start, S, 30)
    tasks = ledger(schedule, due, member=a)
    # A second attempt that retries a run that succeeded: started again without a reason.
    ledger(schedule, [due[10]], member=b, attempt=2, trigger="retry", retry_of=tasks[10])
    ledger(schedule, [due[12]], member=b, attempt=2, trigger="recovery")
    result = audit(cluster, start, due[-1] + S, now=due[-1] + 60 * S)
    assert [(f.due, f.verdict) for f in result.exceptions()] == [(due[10], DOUBLE),
                                                                  (due[12], DOUBLE)]
    assert "which succeeded" in fires(result)[0].detail
    assert "retries no earlier attempt" in fires(result)[1].detail
    assert result.fire_key_unique
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX task_one_per_fire_attempt")
    ledger(schedule, [due[20]], member=b)  # the same fire started twice as attempt 1
    result = audit(cluster, start, due[-1] + S, now=due[-1] + 60 * S)
    assert not result.fire_key_unique and "unique fire key" in result.warnings[0]
    double = fires(result, DOUBLE)
    assert [f.due for f in double] == [due[10], due[12], due[20]]
    assert double[2].attempts == 2 and "2 tasks of attempt 1" in double[2].detail
    assert result.counts[DOUBLE] == 3 and result.counts[RAN] == 27
    out, error = command("--cluster", "test", "--since", start.isoformat(), "--until",
                         (due[-1] + S).isoformat())
    assert error is not None and error.returncode == 1 and "3 DOUBLE" in str(error)


def test_recent_fires_without_a_task_are_not_yet_due(cluster):
    job = add_job(cluster, "recent")
    schedule = add_schedule(job, kind="interval", interval_seconds=1, misfire_grace_seconds=5)
    start = utc(2026, 2, 1, 12, 0, 0)
    in_force_from(schedule, start)
    due = every(start, S, 60)
    ledger(schedule, due[:50])
    now = due[-1] + S / 2  # the last 10 fires have no task yet; grace 5 s + slack 2 s
    result = audit(cluster, start, now, now=now)
    assert result.counts[NOT_YET] == 7 and result.counts[MISSED] == 3
    assert [f.due for f in fires(result, MISSED)] == due[50:53]
    # Claimed but waiting for a slot: not yet, whenever it was due.
    ledger(schedule, [due[50]], state="queued")
    result = audit(cluster, start, now, now=now)
    assert result.counts[MISSED] == 2 and "queued" in fires(result, NOT_YET)[0].detail


def reach(schedule, at) -> None:
    """Where the cluster has got to: the schedule's next fire, as the claiming member left it."""
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=at)


def test_fires_the_cluster_has_not_reached_are_behind_not_missed(cluster):
    start = utc(2026, 2, 1, 12, 0, 0)
    due = every(start, S, 120)
    now = due[-1] + S / 2
    a = member(cluster, "a")  # running all along, and now: busy, not down
    Member.objects.filter(pk=a.pk).update(started_at=start - S, heartbeat_at=now)
    busy = add_schedule(add_job(cluster, "busy"), kind="interval", interval_seconds=1,
                        misfire_grace_seconds=5)
    in_force_from(busy, start)
    ledger(busy, due[:10] + due[11:40], member=a)
    reach(busy, due[40])  # the members have handed out every fire before due[40], no further
    result = audit(cluster, start, now, now=now)
    # due[10] lies before the schedule's next fire and has no task: a real gap. From due[40]
    # on nothing is lost: behind, except the last 7 s (grace 5 s + slack 2 s), not yet.
    assert [f.due for f in fires(result, MISSED)] == [due[10]]
    behind = fires(result, BEHIND)
    assert [f.due for f in behind] == due[40:113]
    assert {f.detail for f in behind} == {
        f"not reached yet: the schedule's next fire is still {audits.text_time(due[40])}"}
    assert [f.due for f in fires(result, NOT_YET)] == due[113:]
    assert result.counts[BEHIND] == 73 and result.counts[RAN] == 39
    # Paused now: nothing is waiting to be handed out, the fires are paused, not behind.
    quiet = add_schedule(add_job(cluster, "quiet"), kind="interval", interval_seconds=1)
    in_force_from(quiet, start)
    ledger(quiet, due[:60], member=a)
    quiet.pause(actor="pat")
    Event.objects.filter(kind="schedule.paused").update(created_at=due[60] - S / 2)
    reach(quiet, due[60])  # a resume of its job would set it; the schedule stays paused
    result = audit(cluster, start, now, job=quiet.job, now=now)
    assert result.counts[PAUSED] == 60 and result.counts[BEHIND] == 0
    out, error = command("--cluster", "test", "--job", "busy", "--since",
                         due[11].isoformat(), "--until", now.isoformat())
    assert error is None, out  # behind is not a failure
    # Audited at the database's time: the last 7 fires are no longer "not yet" but behind.
    assert "behind      80" in out and "not reached yet: the schedule's next fire" in out
    assert out.endswith("Audit passed: nothing MISSED or DOUBLE; still owed, not lost: "
                        "80 fire(s) behind (not reached yet by the cluster).\n")


def test_fires_owed_while_the_cluster_is_down_say_so(cluster):
    start = utc(2026, 2, 1, 12, 0, 0)
    due = every(start, 5 * S, 24)  # 12:00:00 to 12:01:55
    now = due[-1] + S
    job = add_job(cluster, "tick")
    schedule = add_schedule(job, kind="interval", interval_seconds=5, misfire_grace_seconds=1)
    in_force_from(schedule, start)
    m1, m2 = member(cluster, "m1"), member(cluster, "m2")
    # m1 ran to 12:00:32 and stopped; m2 ran from 12:00:42 and went silent at 12:01:08
    # (killed with the whole cluster: no one is left to declare it dead).
    Member.objects.filter(pk=m1.pk).update(started_at=start - S, state="stopped",
                                           stopped_at=start + 32 * S)
    Member.objects.filter(pk=m2.pk).update(started_at=start + 42 * S, heartbeat_at=start + 68 * S)
    ledger(schedule, due[:7], member=m1)  # to 12:00:30
    ledger(schedule, due[9:13], member=m2)  # 12:00:45 to 12:01:00
    reach(schedule, due[13])
    result = audit(cluster, start, now, now=now)
    T = audits.text_time
    # 12:00:35 and 12:00:40: the cluster came back and moved past them with no record: lost.
    missed = fires(result, MISSED)
    assert [f.due for f in missed] == due[7:9]
    assert {f.detail for f in missed} == {
        f"no task and no record why: no member of the cluster was running from "
        f"{T(start + 32 * S)} to {T(start + 42 * S)} (the last, m1, stopped at "
        f"{T(start + 32 * S)})"}
    # 12:01:05, while m2 still ran (to 12:01:08): not reached, behind.
    assert [f.due for f in fires(result, BEHIND)] == [due[13]]
    # 12:01:10 on, the last seconds too: owed while the cluster is down, not lost, not "not yet".
    down = fires(result, DOWN)
    assert [f.due for f in down] == due[14:]
    assert {f.detail for f in down} == {
        f"owed while the cluster was down: no member of the cluster was running from "
        f"{T(start + 68 * S)} and none has joined since (the last, m2, is silent since its "
        f"last heartbeat at {T(start + 68 * S)}, not declared dead yet)"}
    assert result.counts[NOT_YET] == 0 and result.counts[DOWN] == 10
    # Had the cluster moved past 12:01:10 before it went down, that fire would be lost.
    reach(schedule, due[15])
    result = audit(cluster, start, now, now=now)
    assert [f.due for f in fires(result, MISSED)] == [*due[7:9], *due[13:15]]
    assert "was running from " + T(start + 68 * S) in fires(result, MISSED)[-1].detail
    assert result.counts[DOWN] == 9 and result.counts[BEHIND] == 0
    reach(schedule, due[13])
    out, error = command("--cluster", "test", "--since", due[9].isoformat(), "--until",
                         now.isoformat())
    assert error is None, out
    assert "owed while the cluster was down" in out and "10 owed while the cluster was down" in out


@TX
def test_a_stopped_cluster_owes_its_last_fires_while_down(cluster):
    node = make_node()
    try:
        job = add_job(cluster, "tick")
        schedule = add_schedule(job, kind="interval", interval_seconds=1, misfire_grace_seconds=1)
        drive(node, finished(job, 3), message="three runs")
    finally:
        stop(node)
    stopped = Member.objects.get(name="n1").stopped_at
    schedule.refresh_from_db()
    # Past the grace and slack of the first fire after the stop: once missed, then not yet.
    wait_for(lambda: db_now() > schedule.next_fire_at + 4 * S, timeout=10)
    now = db_now()
    result = audit(cluster, schedule.anchor_at, now, now=now)
    down = fires(result, DOWN)
    assert down and down[0].due == schedule.next_fire_at and down[-1].due > now - 3 * S
    assert result.counts[DOWN] == len(down) and result.counts[MISSED] == 0
    assert result.counts[NOT_YET] == 0 and result.counts[RAN] >= 3
    assert f"running from {audits.text_time(stopped)} and none has joined since" in down[0].detail
    out, error = command("--cluster", "test", "--since", schedule.anchor_at.isoformat())
    assert error is None, out


def test_a_schedule_without_history_is_audited_against_its_current_definition(cluster):
    job = add_job(cluster, "bulk")
    schedule = add_schedule(job, kind="interval", interval_seconds=2)
    start = utc(2026, 2, 1, 12, 0, 0)
    Event.objects.filter(schedule=schedule).delete()
    Schedule.objects.filter(pk=schedule.pk).update(created_at=start, anchor_at=start)
    ledger(schedule, every(start, 2 * S, 30))
    result = audit(cluster, start - 60 * S, start + 60 * S, now=start + 120 * S)
    assert result.counts[RAN] == result.owed == 30 and not list(result.exceptions())
    # With only a later change on record, what came before it is unknown: said, not guessed.
    schedule.interval_seconds = 3
    schedule.save()
    in_force_from(schedule, start + 30 * S)
    result = audit(cluster, start - 60 * S, start + 60 * S, now=start + 120 * S)
    assert "not in the event log" in result.warnings[0]
    # After the change: 2 s fires off the 3 s grid are unexpected, 3 s fires without one
    # missed; before it nothing is judged.
    assert result.counts[UNEXPECTED] == 10 and result.counts[MISSED] == 5
    assert result.counts[RAN] == 5


def test_a_changed_schedule_whose_definitions_were_pruned_is_audited_from_its_change(cluster):
    job = add_job(cluster, "changed")
    schedule = add_schedule(job, kind="interval", interval_seconds=2)
    start = utc(2026, 2, 1, 12, 0, 0)
    schedule.interval_seconds = 3
    schedule.save()
    in_force_from(schedule, start + 30 * S)  # the change: every 3 s from 12:00:30
    ledger(schedule, every(start, 2 * S, 15) + every(start + 30 * S, 3 * S, 10))
    Event.objects.filter(schedule=schedule).delete()  # every definition event pruned
    Schedule.objects.filter(pk=schedule.pk).update(created_at=start)
    result = audit(cluster, start, start + 60 * S, now=start + 120 * S)
    # Version 2: what held before the change is unknown, so it is not judged against the
    # current definition (15 fires of 2 s would be unexpected, 10 of 3 s missed).
    assert "not in the event log" in result.warnings[0]
    assert result.counts[RAN] == result.owed == 10 and not list(result.exceptions())


# ------------------------------------------------------------------------------------ the command


def test_json_lists_every_fire_and_ends_with_the_summary(cluster):
    job = add_job(cluster, "json")
    schedule = add_schedule(job, kind="interval", interval_seconds=1)
    start = utc(2026, 2, 1, 12, 0, 0)
    in_force_from(schedule, start)
    due = every(start, S, 20)
    ledger(schedule, due[:5] + due[6:])
    out, error = command("--cluster", "test", "--since", start.isoformat(), "--until",
                         (due[-1] + S).isoformat(), "--json")
    assert error is not None and error.returncode == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "audit" and lines[-1]["type"] == "summary"
    fire_lines = lines[1:-1]
    assert [f["due"] for f in fire_lines] == [d.isoformat() for d in due]
    assert [f["verdict"] for f in fire_lines].count(MISSED) == 1
    assert fire_lines[5]["verdict"] == MISSED and fire_lines[5]["detail"]
    assert fire_lines[0]["verdict"] == RAN and fire_lines[0]["lateness"] == 0.05
    summary = lines[-1]
    assert summary["counts"][RAN] == 19 and summary["counts"][MISSED] == 1
    assert summary["ok"] is False and summary["lateness"]["count"] == 19


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "nope"], "There is no cluster named 'nope'"),
    ([], "--cluster NAME is required"),
    (["--cluster", "test", "--job", "ghost"], "No job named 'ghost'"),
    (["--cluster", "test", "--since", "yesterday-ish"], "--since: cannot read 'yesterday-ish'"),
    (["--cluster", "test", "--until", "2026-13-45"], "--until: cannot read '2026-13-45'"),
    (["--cluster", "test", "--since", "1h", "--until", "2h"], "must be before --until"),
    (["--cluster", "test", "--since", "2026-01-02", "--until", "2026-01-02"],
     "must be before --until"),
])
def test_bad_input_is_refused_with_a_clear_message(cluster, monkeypatch, args, message):
    monkeypatch.delenv("OPSCENTER_CLUSTER", raising=False)
    add_job(cluster, "real")
    before = (Task.objects.count(), Event.objects.count(), Cluster.objects.count())
    out, error = command(*args)
    assert error is not None and error.returncode == 2
    assert message in str(error)
    assert out == ""
    assert (Task.objects.count(), Event.objects.count(), Cluster.objects.count()) == before


def test_relative_and_iso_times():
    now = utc(2026, 3, 1, 12, 0)
    assert audits.parse_when("1h", now) == now - timedelta(hours=1)
    assert audits.parse_when("90m", now) == now - timedelta(minutes=90)
    assert audits.parse_when("7d", now) == now - timedelta(days=7)
    assert audits.parse_when("now", now) == now
    assert audits.parse_when("2026-03-01T10:00:00+02:00", now) == utc(2026, 3, 1, 8)
    assert audits.parse_when("2026-03-01T10:00:00Z", now) == utc(2026, 3, 1, 10)
    assert audits.parse_when("2026-03-01", now) == utc(2026, 3, 1)  # TIME_ZONE is UTC
    assert audits.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert audits.percentile([1.0, 2.0], 0.99) == 1.99


def test_percentiles_from_counts_are_the_percentiles_of_the_values():
    # The set-based audit works its percentiles out from (value, count) pairs; they must be
    # the very floats percentile() gives on every value written out.
    rng = random.Random(7)
    for size in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.choice([0.001, 0.0215, 0.04, 0.1, 60.0, rng.random()])
                        for _ in range(size))
        distinct = sorted(set(values))
        cumulative = list(itertools.accumulate(values.count(v) for v in distinct))
        for p in (0.0, 0.5, 0.99, 1.0):
            assert (audits.percentile_of_counts(distinct, cumulative, p)
                    == audits.percentile(values, p))
    assert audits.percentile_of_counts([], [], 0.5) is None


def test_the_job_filter_audits_one_job(cluster):
    start = utc(2026, 2, 1, 12, 0, 0)
    for name in ("one", "other"):
        schedule = add_schedule(add_job(cluster, name), kind="interval", interval_seconds=1)
        in_force_from(schedule, start)
        ledger(schedule, every(start, S, 10) if name == "one" else every(start, S, 5))
    since, until, now = start, start + 10 * S, start + 60 * S
    assert audit(cluster, since, until, now=now).counts[MISSED] == 5
    one = audit(cluster, since, until, job=Job.objects.get(name="one"), now=now)
    assert one.counts[MISSED] == 0 and one.counts[RAN] == 10 and one.schedules == 1
    out, error = command("--cluster", "test", "--job", "one", "--since", since.isoformat(),
                         "--until", until.isoformat())
    assert error is None


# ------------------------------------------------------------------------------------ the admin


def test_the_job_page_shows_the_audit_of_the_last_hour_and_day(cluster, admin_client):
    job = add_job(cluster, "audited")
    schedule = add_schedule(job, kind="interval", interval_seconds=60)
    now = db_now()
    start = now - timedelta(hours=3) + 30 * S  # fires half a minute away from the bounds
    in_force_from(schedule, start)
    due = every(start, 60 * S, 180)
    ledger(schedule, [d for i, d in enumerate(due) if i not in (10, 170)])
    response = admin_client.get(reverse("admin:scheduler_job_change", args=[job.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Audit" in page and "last hour" in page and "last day" in page
    counts = audits.job_counts(job, {"hour": timedelta(hours=1), "day": timedelta(days=1)})
    assert counts["day"][MISSED] == 2 and counts["hour"][MISSED] == 1
    assert counts["day"][RAN] == 178 and counts["hour"][RAN] == 59
    assert 'class="audit-missed"' in page


@pytest.mark.parametrize("what", ["job", "schedule"])
def test_a_pause_pruned_from_the_event_log_is_read_as_paused_from_before_it(
        cluster, admin_client, what):
    from scheduler.retention import prune

    now = db_now()
    job = add_job(cluster, "pruned")
    schedule = add_schedule(job, kind="interval", interval_seconds=60)
    start = now - timedelta(hours=3) + 30 * S  # fires half a minute away from the bounds
    in_force_from(schedule, start)
    due = every(start, 60 * S, 180)
    paused = job if what == "job" else schedule
    paused.pause(actor="pat")
    paused.resume(actor="rita")
    # Paused 40 days ago, resumed 2.5 hours ago; no task in between.
    Event.objects.filter(kind=f"{what}.paused").update(created_at=now - timedelta(days=40))
    Event.objects.filter(kind=f"{what}.resumed").update(created_at=due[30] - S)
    ledger(schedule, [d for i, d in enumerate(due) if i >= 30 and i != 150])
    assert prune(cluster.pk, task_days=30, event_days=30) == 1  # the pause event, only
    assert not Event.objects.filter(kind=f"{what}.paused").exists()
    result = audit(cluster, start, now, now=now)
    assert [f.due for f in fires(result, PAUSED)] == due[:30]
    assert fires(result, PAUSED)[0].detail == (
        f"{what} paused by unknown from before the event log on record to "
        f"{audits.text_time(due[30] - S)} (resumed by rita); its pause is not in the event log")
    assert [f.due for f in fires(result, MISSED)] == [due[150]]  # a real gap, still found
    assert result.counts[RAN] == 149
    counts = audits.job_counts(job, {"hour": timedelta(hours=1), "day": timedelta(days=1)})
    assert counts["day"][PAUSED] == 30 and counts["day"][MISSED] == 1
    response = admin_client.get(reverse("admin:scheduler_job_change", args=[job.pk]))
    assert response.status_code == 200 and "last day" in response.content.decode()
    # Paused now, without its pause on record (deleted): when it began is unknown, so from
    # the resume on record on, an untaken fire is paused, not missed on a missing record.
    paused.pause(actor="pat")
    Event.objects.filter(kind=f"{what}.paused").delete()
    Task.objects.filter(scheduled_for__gte=due[170]).delete()
    result = audit(cluster, start, now, now=now)
    assert [f.due for f in fires(result, PAUSED)] == due[:30] + [due[150]] + due[170:]
    assert result.counts[MISSED] == 0
    assert fires(result, PAUSED)[-1].detail == (
        f"{what} paused by unknown from {audits.text_time(due[30] - S)} and still paused; "
        "the pause is not in the event log")
    response = admin_client.get(reverse("admin:scheduler_job_change", args=[job.pk]))
    assert response.status_code == 200


def test_pruning_takes_the_oldest_first_so_the_history_left_is_whole(cluster, monkeypatch):
    from scheduler import retention

    job = add_job(cluster, "old")
    now = db_now()
    job.pause(actor="pat")
    job.resume(actor="rita")
    Event.objects.filter(kind="job.paused").update(created_at=now - timedelta(days=50))
    Event.objects.filter(kind="job.resumed").update(created_at=now - timedelta(days=40))
    monkeypatch.setattr(retention, "BATCH", 1)
    assert retention.prune(cluster.pk, task_days=30, event_days=30) == 1
    # A pause without its resume would read as paused to this day.
    assert list(Event.objects.filter(job=job).values_list("kind", flat=True)) == ["job.resumed"]


# ------------------------------------------------------------------------------------ both ways


@pytest.mark.parametrize("seed", range(5))
def test_both_audits_agree_on_a_random_ledger(cluster, seed):
    """Random ledgers with every kind of situation: on PostgreSQL the set-based audit and the
    per-fire stream must give the same verdict for every fire (the audit helper compares)."""
    import random

    from scheduler import timing

    rng = random.Random(seed)
    start = utc(2026, 2, 1, 12, 0, 0)
    members = [member(cluster, name) for name in ("a", "b", "c")]
    window = (start + 30 * S, start + 600 * S)
    now = start + rng.choice([300, 590, 700]) * S
    down_from = None
    if rng.random() < 0.6:  # the whole cluster stopped (and is still down, or came back)
        down_from = start + timedelta(seconds=rng.uniform(100, 500))
        Member.objects.filter(pk__in=[m.pk for m in members]).update(
            started_at=start, state="stopped", stopped_at=down_from)
        if rng.random() < 0.3:
            Member.objects.filter(pk=members[0].pk).update(
                started_at=down_from + timedelta(seconds=rng.uniform(10, 60)), state="active",
                stopped_at=None, heartbeat_at=now)
    untaken = {MISSED, PAUSED, NOT_YET, BEHIND, DOWN}  # the verdicts a fire without a task may get
    reaches = {}
    expect: dict[tuple, set] = {}  # (schedule, due) -> the verdicts it may get
    for i in range(6):
        job = add_job(cluster, f"r{i}")
        kind = rng.choice(["interval", "interval", "interval", "cron"])
        if kind == "interval":
            schedule = add_schedule(job, kind="interval", interval_seconds=rng.choice([1, 2, 3]))
        else:
            schedule = add_schedule(job, kind="cron", cron=rng.choice(["* * * * *",
                                                                      "*/2 * * * *"]))
        born = start + timedelta(seconds=rng.uniform(0, 60))
        in_force_from(schedule, born)
        sections = [(born, schedule.timing())]
        if rng.random() < 0.5:  # edited mid-window
            edited = born + timedelta(seconds=rng.uniform(100, 400))
            if kind == "interval":
                schedule.interval_seconds = rng.choice(
                    [n for n in (1, 2, 4) if n != schedule.interval_seconds])
            else:
                schedule.cron = "*/3 * * * *"
            schedule.save()
            assert schedule.version == 2
            in_force_from(schedule, edited)
            sections.append((edited, schedule.timing()))
        if rng.random() < 0.4:  # paused for a while (job or schedule)
            paused = born + timedelta(seconds=rng.uniform(50, 500))
            what, actor = rng.choice([("job", "pat"), ("schedule", "sam")])
            kinds = (f"{what}.paused", f"{what}.resumed")
            for kind_, when in zip(kinds, (paused, paused + timedelta(seconds=rng.uniform(5, 90))),
                                   strict=True):
                Event.objects.create(cluster=cluster, kind=kind_, actor=actor, job=job,
                                     schedule=schedule if what == "schedule" else None,
                                     message=kind_, created_at=when)
        owed = []
        for j, (at, t) in enumerate(sections):
            end = sections[j + 1][0] if j + 1 < len(sections) else start + 900 * S
            owed += timing.fires_between(t, at - S / 10**6, end - S / 10**6, 10_000)
        run_of_misfires: list = []
        for due in owed:
            roll = rng.random()
            m = rng.choice(members)
            key = (schedule.pk, due)
            if roll < 0.06:
                run_of_misfires.append(due)
                expect[key] = {MISFIRE, *untaken}
                continue
            if run_of_misfires and rng.random() < 0.5:
                MisfireRecord.objects.create(
                    cluster=cluster, schedule=schedule, first_fire_at=run_of_misfires[0],
                    last_fire_at=run_of_misfires[-1], fire_count=len(run_of_misfires),
                    policy="skip", reason="skip", member=m)
            run_of_misfires = []
            if roll < 0.09:
                expect[key] = untaken
                continue
            late = rng.uniform(0, 2)
            if roll < 0.11:
                ledger(schedule, [due], state="skipped")
                expect[key] = {MISFIRE}
            elif roll < 0.13:
                first = ledger(schedule, [due], member=m, state="failed", late=late)[0]
                ledger(schedule, [due], member=rng.choice(members), attempt=2, trigger="retry",
                       retry_of=first, late=late + 5)
                expect[key] = {RAN}
            elif roll < 0.15:
                first = ledger(schedule, [due], member=m, state="lost", late=late)[0]
                ledger(schedule, [due], member=rng.choice(members), attempt=2,
                       trigger="recovery", retry_of=first, late=late + 3)
                expect[key] = {RERUN}
            elif roll < 0.16:
                first = ledger(schedule, [due], member=m, late=late)[0]
                ledger(schedule, [due], member=m, attempt=2, trigger="retry", retry_of=first)
                expect[key] = {DOUBLE}
            elif roll < 0.17:
                ledger(schedule, [due], state="queued")
                expect[key] = {NOT_YET}
            elif roll < 0.18:
                ledger(schedule, [due + S / 3], member=m)  # off the grid, and missed
                expect[key] = untaken
                expect[(schedule.pk, due + S / 3)] = {UNEXPECTED}
            else:
                ledger(schedule, [due], member=m, late=late)
                expect[key] = {RAN}
        if rng.random() < 0.6:  # the cluster has not reached the last fires: behind (or down)
            reaches[schedule.pk] = rng.choice(owed[len(owed) // 3:])
            for due in owed:
                if due >= reaches[schedule.pk] and expect.get((schedule.pk, due)) == {RAN}:
                    Task.objects.filter(schedule=schedule, scheduled_for=due).delete()
                    expect[(schedule.pk, due)] = untaken
            reach(schedule, reaches[schedule.pk])
    result = audit(cluster, *window, now=now)
    every_fire = list(audits.iter_fires(
        audits.build_plans(cluster.pk, *window, now=now)[0], *window, now))
    assert sum(result.counts.values()) == len(every_fire)
    judged = {(f.schedule_id, f.due): f.verdict for f in every_fire}
    assert judged == {k: judged[k] for k in expect if window[0] <= k[1] < window[1]}
    for key, verdict in judged.items():
        assert verdict in expect[key], (key, verdict, expect[key])
    for verdict in audits.ALL_VERDICTS:
        assert result.counts[verdict] == sum(f.verdict == verdict for f in every_fire)
    for f in every_fire:  # behind and down only at or after the schedule's next fire
        if f.verdict in (BEHIND, DOWN):
            assert f.due >= reaches[f.schedule_id]
        if f.verdict == DOWN:
            assert down_from is not None and f.due >= down_from
    assert result.lateness["count"] > 0
