"""Exactly once under faults: the start fence at each task's start, what slips through written
down for the audit, and honest start times (started_at is when the job was really entered)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler import ledger
from scheduler.audit import DOUBLE, MISSED, audit
from scheduler.clock import db_now
from scheduler.models import Event, Member, Schedule, Task
from tests.conftest import add_job, is_postgres, wait_for
from tests.jobs import append_entry
from tests.test_node import drive, make_node

# Python job callables (dotted paths tests.test_fence:...).
ENTRIES: list[tuple[int, float]] = []  # (task id, time.time() at entry), in-process jobs


def record_entry(ctx):
    ENTRIES.append((ctx.task_id, time.time()))


def block_entered(ctx):
    ENTRIES.append((ctx.task_id, time.time()))
    ctx.cancelled.wait(30)




def freeze_on_first_entry(ctx):
    """The first run of the job freezes its own member (SIGSTOP) once the job is entered: a
    member that hangs while its job runs, to be declared dead and have the fire recovered."""
    append_entry(ctx)
    try:
        fd = os.open(ctx.parameters["file"] + ".froze", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGSTOP)


def once(job, at):
    schedule = Schedule(job=job, kind="once", run_at=at)
    schedule.full_clean()
    schedule.save()
    return schedule


def due_now(job):
    """A one-off fire of `job` a moment from now; returns once it is due."""
    schedule = once(job, db_now() + timedelta(milliseconds=200))
    wait_for(lambda: db_now() >= schedule.run_at, timeout=5, message="due")
    return schedule


@pytest.fixture(autouse=True)
def _clear_entries():
    ENTRIES.clear()


# ------------------------------------------------------------------ in process


@pytest.fixture
def node(cluster):
    n = make_node(workers=4)
    yield n
    n.stopping = True
    n.shutdown()


def fresh_heartbeat(node) -> None:
    node._next_beat = 0.0
    node.step_heartbeat()


def claim_now(node) -> list[ledger.Started]:
    """Make the node claim what is due now, without a heartbeat first."""
    node._next_beat = float("inf")
    node._claim_at = 0.0
    node.step_claim()
    return [run.started for run in node.running.values()]


def outcomes(node) -> None:
    wait_for(lambda: all(r.outcome is not None for r in node.running.values()), timeout=5,
             message="the pool's outcomes")


def test_the_start_fence_does_not_enter_a_job_its_member_may_no_longer_own(node, cluster):
    job = add_job(cluster, "fenced", command="tests.test_fence:record_entry")
    due_now(job)
    # The member's ownership ran out after the claim committed (as after a freeze: the
    # monotonic clock runs on while a process is stopped), before the pool entered the job.
    node.owned_until = time.monotonic() - 1
    claimed = claim_now(node)
    assert len(claimed) == 1
    outcomes(node)
    assert ENTRIES == []
    node.step_record_finished()
    task = Task.objects.get(pk=claimed[0].task_id)
    assert task.state == "lost" and task.error.startswith("not started: member n1 was "
                                                          "unresponsive for")
    assert task.started_at is None and task.claimed_at is not None
    # Never entered, so it runs again (a recovery), once.
    node._next_beat = 0.0
    recovery = drive(node, lambda: Task.objects.filter(retry_of=task, state="succeeded").first(),
                     message="recovery")
    assert recovery.trigger == "recovery"
    assert [t for t, _ in ENTRIES] == [recovery.pk]


def test_a_task_the_fence_refused_stays_cancelled_when_an_operator_asked(node, cluster):
    job = add_job(cluster, "fenced-cancel", command="tests.test_fence:record_entry")
    due_now(job)
    node.owned_until = time.monotonic() - 1
    claimed = claim_now(node)
    outcomes(node)
    task = Task.objects.get(pk=claimed[0].task_id)
    task.request_cancel("not wanted today", actor="alice")  # before the member recorded it
    node.step_record_finished()
    task.refresh_from_db()
    assert task.state == "cancelled" and task.error == "cancelled: not wanted today"
    assert not Task.objects.filter(retry_of=task).exists()
    assert ENTRIES == []


def test_a_heartbeat_gives_the_member_its_tasks_for_the_ownership_window(node, cluster):
    node.owned_until = 0.0
    node._next_beat = 0.0
    before = time.monotonic()
    node.step_heartbeat()
    window = node._ownership_window()
    assert before < node.owned_until <= before + window
    assert node.owned_until > time.monotonic()
    assert node._unowned() == ""


def test_a_result_that_is_no_longer_ours_but_ran_is_written_down_as_a_double(node, cluster):
    job = add_job(cluster, "ran-unowned", command="tests.test_fence:record_entry")
    schedule = due_now(job)
    claimed = claim_now(node)
    outcomes(node)
    assert len(ENTRIES) == 1
    # Meanwhile the cluster declared the task lost with its member and queued a recovery.
    ledger.lose_member_tasks(cluster.pk, node.member.pk, by="other",
                             why="member n1 died while the task ran")
    node.step_record_finished()
    task = Task.objects.get(pk=claimed[0].task_id)
    assert task.state == "lost" and task.ran_unowned_at is not None
    entered = datetime.fromtimestamp(ENTRIES[0][1], UTC)
    assert abs(task.ran_unowned_at - entered) < timedelta(milliseconds=50)
    event = Event.objects.get(kind="task.ran_unowned", task=task)
    assert "n1" in event.message and event.member_id == node.member.pk
    # The recovery runs too: the fire ran twice, and the audit says so.
    node._next_beat = 0.0
    drive(node, lambda: Task.objects.filter(retry_of=task, state="succeeded").exists(),
          message="recovery")
    result = audit(cluster, since=schedule.run_at - timedelta(seconds=1),
                   until=db_now() + timedelta(seconds=1), method="python")
    assert result.counts[DOUBLE] == 1, result.counts
    (fire,) = [f for f in result.items if getattr(f, "verdict", None) == DOUBLE]
    assert "n1" in fire.detail and "declared lost" in fire.detail


def test_a_member_declared_dead_writes_down_the_jobs_it_had_entered(node, cluster):
    job = add_job(cluster, "blocked", command="tests.test_fence:block_entered")
    due_now(job)
    claimed = claim_now(node)
    wait_for(lambda: ENTRIES, timeout=5, message="job entered")
    old = node.member.pk
    Member.objects.filter(pk=old).update(state="dead")
    ledger.lose_member_tasks(cluster.pk, old, by="other", why="member n1 died")
    node._next_beat = 0.0
    node.step_heartbeat()  # not alive: stops its tasks, writes down the entered one, rejoins
    assert node.member.pk != old and not node.running
    task = Task.objects.get(pk=claimed[0].task_id)
    assert task.ran_unowned_at is not None
    assert Event.objects.filter(kind="task.ran_unowned", task=task, member_id=old).exists()


def test_a_declared_dead_member_whose_old_row_is_gone_does_not_wedge(node, cluster):
    """Writing down a run that was entered is not worth a node: a member row deleted meanwhile
    (its events would point at nothing) is logged and dropped, and the node claims again."""
    job = add_job(cluster, "gone", command="tests.test_fence:block_entered")
    due_now(job)
    claim_now(node)
    wait_for(lambda: ENTRIES, timeout=5, message="job entered")
    old = node.member.pk
    Member.objects.filter(pk=old).update(state="dead")
    ledger.lose_member_tasks(cluster.pk, old, by="other", why="member n1 died")
    Member.objects.filter(pk=old).delete()  # the admin may delete a member that is not live
    node._next_beat = 0.0
    node.step_heartbeat()
    assert node.member.pk != old and not node._ran_unowned
    later = add_job(cluster, "after", command="tests.test_fence:record_entry")
    due_now(later)
    node._next_beat = 0.0
    drive(node, lambda: Task.objects.filter(job=later, state="succeeded").exists(),
          message="the node fires again")


def test_started_at_is_when_the_job_was_entered_and_claimed_at_when_it_was_claimed(node,
                                                                                   cluster):
    job = add_job(cluster, "late-entry", command="tests.test_fence:record_entry")
    due_now(job)
    # Keep the pool busy for a moment, as a burst or a slow thread start would: the job is
    # entered well after its claim.
    gate = threading.Event()
    fresh_heartbeat(node)  # the start fence's window on PostgreSQL is 1.5 heartbeats
    for _ in range(4):
        node.pool.submit(gate.wait, 0.15)
    claimed = claim_now(node)
    outcomes(node)
    node.step_record_finished()
    task = Task.objects.get(pk=claimed[0].task_id)
    entered = datetime.fromtimestamp(ENTRIES[0][1], UTC)
    assert task.state == "succeeded"
    assert abs(task.started_at - entered) < timedelta(milliseconds=20), (task.started_at,
                                                                         entered)
    assert task.started_at - task.claimed_at > timedelta(milliseconds=100)
    assert task.lateness == task.started_at - task.scheduled_for


def test_the_start_of_a_long_job_is_written_at_the_next_log_flush(node, cluster):
    job = add_job(cluster, "long", command="tests.test_fence:block_entered")
    due_now(job)
    gate = threading.Event()
    fresh_heartbeat(node)
    for _ in range(4):
        node.pool.submit(gate.wait, 0.15)
    claimed = claim_now(node)
    wait_for(lambda: node.running[claimed[0].task_id].entry.at, timeout=5, message="entry")
    node._next_log_flush = 0.0
    node.step_flush_logs()
    task = Task.objects.get(pk=claimed[0].task_id)
    entered = datetime.fromtimestamp(ENTRIES[0][1], UTC)
    assert task.state == "running"
    assert abs(task.started_at - entered) < timedelta(milliseconds=20)
    assert task.started_at - task.claimed_at > timedelta(milliseconds=100)


# ------------------------------------------------------------------ real processes

FAST_ARGS = ["--heartbeat-interval", "0.2", "--dead-after", "1.5", "--takeover-stagger", "0.5"]


def state_of(pid: int) -> str:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return fields[0].decode()


def entries_of(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def assert_audit_clean(cluster, since) -> None:
    until = db_now() + timedelta(seconds=1)
    for method in ("python", "sql"):
        result = audit(cluster, since=since, until=until, method=method)
        assert result.counts[MISSED] == 0 and result.counts[DOUBLE] == 0, (method,
                                                                           result.counts)


def _start_active(start_node, names, workers, env=None):
    nodes = {}
    for name in names:
        nodes[name] = start_node("--cluster", "test", "--node", name, "--distributed-orders",
                                 "--workers", str(workers), *FAST_ARGS,
                                 env=(env or {}).get(name))
    wait_for(lambda: set(names) <= set(Member.objects.filter(
        cluster__name="test", state="active").values_list("name", flat=True)),
        timeout=30, message="members up")
    time.sleep(1.6)  # members judge others only once connected for dead-after
    return nodes


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL")
def test_a_member_frozen_right_after_its_claim_enters_none_of_those_jobs(cluster, start_node,
                                                                         tmp_path):
    out = tmp_path / "entries"
    jobs = [add_job(cluster, f"burst-{i:02d}", command="tests.jobs:append_entry",
                    parameters={"file": str(out)}) for i in range(60)]
    nodes = _start_active(start_node, ["m1", "m2", "m3"], workers=20,
                          env={"m1": {"OPSCENTER_TEST_SIGSTOP_AFTER_CLAIM": "1"}})
    since = db_now()
    due = since + timedelta(seconds=3)  # time to save 60 schedules on a busy machine
    for job in jobs:
        once(job, due)
    m1 = nodes["m1"]
    wait_for(lambda: state_of(m1.pid) == "T", timeout=15, message="m1 frozen after its claim")
    frozen = list(Task.objects.filter(member__name="m1", attempt=1).values_list("pk", flat=True))
    assert frozen, "m1 claimed none of the burst: nothing to test"
    # The others declare m1 dead, mark its tasks lost and run them again.
    wait_for(lambda: Task.objects.filter(retry_of__in=frozen, state="succeeded").count()
             == len(frozen), timeout=20, message="the others recover m1's fires")
    m1.signal(signal.SIGCONT)
    # m1 wakes, finds itself declared dead and joins again; its pool must enter nothing.
    wait_for(lambda: Member.objects.filter(name="m1", state="active").exists(), timeout=15,
             message="m1 back")
    time.sleep(1.0)  # what m1's woken threads would have run, they would have run by now
    lines = entries_of(out)
    per_fire = Counter((line[0], line[1]) for line in lines)
    assert len(per_fire) == len(jobs), "every fire entered"
    doubles = {k: n for k, n in per_fire.items() if n > 1}
    assert not doubles, f"entered twice: {doubles}"
    assert not Task.objects.filter(ran_unowned_at__isnull=False).exists()
    assert_audit_clean(cluster, since)
    # Honest start: each started_at is the job's own clock reading at entry (same host).
    started = dict(Task.objects.filter(started_at__isnull=False).values_list("pk", "started_at"))
    for _name, _due, task_id, at in lines:
        entered = datetime.fromtimestamp(float(at), UTC)
        assert abs(started[int(task_id)] - entered) < timedelta(milliseconds=50)


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL")
def test_a_job_that_ran_while_its_member_was_declared_dead_is_a_double_in_the_audit(
        cluster, start_node, tmp_path):
    out = tmp_path / "entries"
    job = add_job(cluster, "freezer", command="tests.test_fence:freeze_on_first_entry",
                  parameters={"file": str(out)})
    nodes = _start_active(start_node, ["m1", "m2"], workers=4)
    since = db_now()
    once(job, since + timedelta(seconds=1))
    marker = Path(str(out) + ".froze")
    wait_for(marker.exists, timeout=15, message="the first run freezes its member")
    first = wait_for(lambda: Task.objects.filter(job=job, attempt=1).first(), timeout=5)
    victim = nodes[first.member.name]
    wait_for(lambda: state_of(victim.pid) == "T", timeout=5, message="frozen")
    wait_for(lambda: Task.objects.filter(retry_of=first, state="succeeded").exists(),
             timeout=20, message="the other member recovers the fire")
    victim.signal(signal.SIGCONT)
    wait_for(lambda: Task.objects.get(pk=first.pk).ran_unowned_at, timeout=15,
             message="the woken member writes down the run")
    first.refresh_from_db()
    assert len(entries_of(out)) == 2  # it really ran twice
    event = Event.objects.get(kind="task.ran_unowned", task=first)
    assert first.member.name in event.message
    for method in ("python", "sql"):
        result = audit(cluster, since=since, until=db_now() + timedelta(seconds=1),
                       method=method)
        assert result.counts[DOUBLE] == 1, (method, result.counts)
        (fire,) = [f for f in result.items if getattr(f, "verdict", None) == DOUBLE]
        assert first.member.name in fire.detail and "declared lost" in fire.detail


# ------------------------------------------------------------------ claiming a little ahead


def claim_ahead(cluster, member, ahead):
    return ledger.claim(cluster_id=cluster.pk, member_id=member.pk, member_names=[member.name],
                        capacity=10, epoch=None, dead_after=5.0, cache=ledger.TimingCache(),
                        ahead=ahead)


def test_a_fire_due_soon_is_claimed_ahead_and_entered_at_its_due_instant(node, cluster):
    job = add_job(cluster, "punctual", command="tests.test_fence:record_entry")
    schedule = once(job, db_now() + timedelta(milliseconds=400))
    task = drive(node, lambda: Task.objects.filter(job=job, state="succeeded").first(),
                 message="the fire ran")
    entered = datetime.fromtimestamp(ENTRIES[0][1], UTC)
    # Claimed before its instant, entered at it (not before), and started_at says so.
    assert task.claimed_at < schedule.run_at <= task.started_at
    assert entered >= schedule.run_at - timedelta(milliseconds=2)
    assert task.lateness < timedelta(milliseconds=50)


def test_a_fire_due_soon_that_cannot_start_at_once_is_left_for_its_instant(cluster):
    member = Member.objects.create(cluster=cluster, name="m", mode="single", host="h", pid=1,
                                   version="x", state="active")
    busy = add_job(cluster, "busy", overlap_policy="skip")
    free = add_job(cluster, "free")
    soon = db_now() + timedelta(seconds=10)
    schedules = {job.name: once(job, soon) for job in (busy, free)}
    Task.objects.create(cluster=cluster, job=busy, trigger="manual", state="running",
                        member=member, scheduled_for=db_now(), started_at=db_now())
    result = claim_ahead(cluster, member, ahead=20.0)
    # The free job's fire is taken (its start planned at its due instant); the busy one's is
    # not skipped early: its overlap is judged when it is due.
    (started,) = result.started
    assert started.job.name == "free" and result.deferred
    task = Task.objects.get(pk=started.task_id)
    assert task.scheduled_for == soon and task.started_at == soon and task.claimed_at < soon
    assert not Task.objects.filter(job=busy, schedule__isnull=False).exists()
    schedules["busy"].refresh_from_db()
    assert schedules["busy"].next_fire_at == soon
    # Not due within the look-ahead: nothing is taken.
    assert claim_ahead(cluster, member, ahead=1.0).started == []


# ------------------------------------------------------------------ the executor's entry hook


@pytest.mark.parametrize("kind,command", [("python", "tests.test_fence:record_entry"),
                                          ("shell", "echo entered")])
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_the_executor_enters_at_not_before_and_only_past_the_gate(kind, command, timeout):
    from scheduler import executors

    def run(entry, cancel=None):
        log = executors.LogBuffer()
        outcome = executors.execute(
            executors.TaskRun(task_id=1, job_name="j", kind=kind, command=command,
                              timeout=timeout), log, cancel or executors.Cancel(), entry=entry)
        return outcome, log.drain()

    not_before = time.monotonic() + 0.1
    entry = executors.Entry(lambda: "", not_before=not_before)
    outcome, text = run(entry)
    assert outcome.state == "succeeded" and not_before <= entry.at < not_before + 0.05
    # Refused by the gate: nothing is started.
    ENTRIES.clear()
    entry = executors.Entry(lambda: "not started: gone")
    outcome, text = run(entry)
    assert (outcome.state, outcome.error) == ("lost", "not started: gone")
    assert entry.at is None and ENTRIES == [] and "entered" not in text
    # Cancelled while waiting for its instant: cancelled, not started, and at once.
    cancel = executors.Cancel()
    threading.Timer(0.05, cancel.request, ["replaced"]).start()
    began = time.monotonic()
    entry = executors.Entry(lambda: "", not_before=began + 5)
    outcome, text = run(entry, cancel)
    assert outcome.state == "cancelled" and entry.at is None and time.monotonic() - began < 1
