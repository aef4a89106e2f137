"""The node's steps, driven in this process against the test database."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db.models import Count

from scheduler.clock import db_now
from scheduler.membership import MemberOptions
from scheduler.models import Event, Job, Member, MisfireRecord, Schedule, Task
from scheduler.node import Node, NodeSettings
from tests.conftest import add_interval, add_job, wait_for

# The test's own transaction stays open between ticks: no idle-in-transaction limit here.
FAST = NodeSettings(heartbeat_interval=0.2, dead_after=1.0, takeover_stagger=0.2,
                    stop_grace=2.0, log_flush_interval=0.1, idle_in_transaction_timeout=0)

# Python job callables used by the tests (dotted paths tests.test_node:...).
RUNS: list[dict] = []


def noop(ctx):
    return None


def count_runs(ctx):
    ctx.data["runs"] = ctx.data.get("runs", 0) + 1
    ctx.logger.info("run %s", ctx.data["runs"])


def fail(ctx):
    raise RuntimeError(f"failing on attempt {ctx.attempt}")


def block(ctx):
    ctx.cancelled.wait(30)


def leave_a_datetime(ctx):
    from datetime import datetime

    ctx.data["when"] = datetime(2026, 1, 1)


def ignore_cancel(ctx):
    import time as _time

    _time.sleep(3)


JOB_CONNECTIONS: list = []


def use_the_orm(ctx):
    from django.db import connections

    Job.objects.filter(name=ctx.job_name).count()
    JOB_CONNECTIONS.append(connections["default"])  # this pool thread's own wrapper


def make_node(cluster_name="test", name="n1", mode="single", workers=4, conf=FAST, **kw):
    node = Node(MemberOptions(cluster=cluster_name, name=name, mode=mode, workers=workers, **kw),
                conf)
    node.start()
    return node


def drive(node: Node, until, timeout: float = 10.0, message: str = ""):
    """Run the node's loop until `until()` is truthy."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or until}")
        node.tick()
    return until()




def finished(job, n=1):
    return lambda: Task.objects.filter(job=job, finished_at__isnull=False).count() >= n


@pytest.fixture
def node(cluster):
    n = make_node()
    yield n
    n.stopping = True
    n.shutdown()


def test_interval_schedule_fires_once_per_fire_in_order(node, cluster):
    job = add_job(cluster, "tick")
    schedule = add_interval(job, 1)
    drive(node, finished(job, 3), message="three runs")
    tasks = list(Task.objects.filter(schedule=schedule).order_by("scheduled_for"))
    times = [t.scheduled_for for t in tasks]
    assert len(set(times)) == len(times)
    assert all((b - a) == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False))
    assert times[0] == schedule.anchor_at
    assert all(t.member_id == node.member.pk and t.attempt == 1 for t in tasks)
    done = [t for t in tasks if t.finished_at]
    assert all(t.state == "succeeded" for t in done)
    # Never started before its time.
    assert min(t.lateness for t in done) >= timedelta(0)


def test_a_python_job_using_the_orm_leaves_no_connection_open_in_the_pool(node, cluster):
    JOB_CONNECTIONS.clear()
    job = add_job(cluster, "orm", command="tests.test_node:use_the_orm", max_parallel=3)
    for _ in range(3):
        job.run_now(actor="alice")
    drive(node, finished(job, 3), message="three runs")
    assert set(Task.objects.filter(job=job).values_list("state", flat=True)) == {"succeeded"}
    assert len(JOB_CONNECTIONS) == 3
    # Closed once the task ends: a pool thread lives as long as the member.
    wait_for(lambda: all(c.connection is None for c in JOB_CONNECTIONS), timeout=5,
             message="the pool threads' connections closed")


def test_shell_job_log_and_parameters_are_recorded(node, cluster):
    job = add_job(cluster, "shell", kind="shell", command='echo "to $WHO"; echo oops >&2; exit 3',
                  parameters={"WHO": "operators"})
    task = job.run_now(actor="alice")
    drive(node, lambda: Task.objects.get(pk=task.pk).finished_at, message="manual run")
    task.refresh_from_db()
    assert task.state == "failed" and task.exit_code == 3
    assert task.log_text() == "to operators\noops\n"
    assert task.trigger == "manual" and task.requested_by == "alice"
    assert Event.objects.filter(kind="task.failed", task=task).exists()


def test_log_is_readable_while_the_task_runs(node, cluster):
    job = add_job(cluster, "chatty", kind="shell",
                  command="echo first; sleep 30; echo never")
    task = job.run_now()
    drive(node, lambda: "first" in Task.objects.get(pk=task.pk).log_text(), message="live log")
    assert Task.objects.get(pk=task.pk).state == "running"
    task.request_cancel("test over")
    drive(node, lambda: Task.objects.get(pk=task.pk).finished_at, message="cancel")
    assert Task.objects.get(pk=task.pk).state == "cancelled"


def test_paused_job_and_paused_schedule_start_nothing(node, cluster):
    job = add_job(cluster, "paused-job")
    add_interval(job, 1)
    job.pause(actor="bob")
    other = add_job(cluster, "paused-schedule")
    schedule = add_interval(other, 1)
    schedule.pause(actor="bob")
    witness = add_job(cluster, "witness")
    add_interval(witness, 1)
    drive(node, finished(witness, 2), message="witness runs")
    assert not Task.objects.filter(job__in=[job, other]).exists()
    assert Event.objects.filter(kind="job.paused", actor="bob").exists()
    # Resumed, it fires from now on, not the fires owed while paused.
    before = db_now()
    job.resume(actor="bob")
    drive(node, finished(job, 1), message="resumed job runs")
    assert Task.objects.filter(job=job).earliest("scheduled_for").scheduled_for >= before


def test_overlap_skip_records_skipped_fires(node, cluster):
    job = add_job(cluster, "slow", command="tests.test_node:block", overlap_policy="skip")
    add_interval(job, 1)
    drive(node, lambda: Task.objects.filter(job=job, state="skipped").count() >= 2,
          message="skipped fires")
    assert Task.objects.filter(job=job, state="running").count() == 1
    skipped = Task.objects.filter(job=job, state="skipped").first()
    assert "overlap" in skipped.error and skipped.member_id is None


def test_overlap_queue_runs_fires_one_after_another(node, cluster):
    # Each run takes longer than the interval: the next fire waits in the queue.
    job = add_job(cluster, "queued", kind="shell", command="sleep 1.3", overlap_policy="queue")
    add_interval(job, 1)
    drive(node, lambda: Task.objects.filter(job=job, state="queued").exists(), timeout=10,
          message="a fire queued behind the running one")
    drive(node, finished(job, 3), timeout=20)
    tasks = Task.objects.filter(job=job, finished_at__isnull=False).order_by("started_at")
    for a, b in zip(tasks, tasks[1:], strict=False):
        assert b.started_at >= a.finished_at  # never two at once
    assert any(t.lateness > timedelta(seconds=0.2) for t in tasks[1:])


def test_overlap_replace_stops_the_running_task(node, cluster):
    job = add_job(cluster, "replace", command="tests.test_node:block", overlap_policy="replace")
    add_interval(job, 1)
    drive(node, lambda: Task.objects.filter(job=job, state="cancelled").exists(), timeout=15,
          message="replaced run")
    cancelled = Task.objects.filter(job=job, state="cancelled").first()
    assert "replaced" in cancelled.error
    drive(node, lambda: Task.objects.filter(job=job, state="running",
                                            scheduled_for__gt=cancelled.scheduled_for).exists(),
          message="the newer run started")


def test_max_parallel_bounds_running_tasks(node, cluster):
    job = add_job(cluster, "wide", command="tests.test_node:block", max_parallel=2)
    for _ in range(4):
        job.run_now()
    drive(node, lambda: Task.objects.filter(job=job, state="running").count() == 2)
    for _ in range(5):
        node.tick()
    assert Task.objects.filter(job=job, state="running").count() == 2
    assert Task.objects.filter(job=job, state="queued").count() == 2


def test_failed_task_is_retried_with_backoff(node, cluster):
    job = add_job(cluster, "flaky", command="tests.test_node:fail", max_retries=2,
                  retry_backoff_seconds=0.2)
    first = job.run_now()
    drive(node, lambda: Task.objects.filter(job=job, finished_at__isnull=False).count() == 3,
          message="three attempts")
    attempts = list(Task.objects.filter(job=job).order_by("attempt"))
    assert [t.attempt for t in attempts] == [1, 2, 3]
    assert [t.trigger for t in attempts] == ["manual", "retry", "retry"]
    assert all(t.state == "failed" for t in attempts)
    assert attempts[1].retry_of_id == first.pk
    # Backoff: retry n waits backoff * 2^(n-1) after the previous attempt ended.
    assert attempts[1].started_at - attempts[0].finished_at >= timedelta(seconds=0.2)
    assert attempts[2].started_at - attempts[1].finished_at >= timedelta(seconds=0.4)
    assert "RuntimeError: failing on attempt 3" in attempts[2].error
    for _ in range(5):
        node.tick()
    assert Task.objects.filter(job=job).count() == 3  # no fourth attempt


def test_stateful_job_keeps_its_data_map(node, cluster):
    job = add_job(cluster, "counter", command="tests.test_node:count_runs", stateful=True,
                  data_map={"runs": 10})
    add_interval(job, 1)
    drive(node, finished(job, 3), timeout=15)
    for _ in range(3):
        node.tick()
    job.refresh_from_db()
    succeeded = Task.objects.filter(job=job, state="succeeded").count()
    assert job.data_map["runs"] == 10 + succeeded
    assert "run 11" in Task.objects.filter(job=job).order_by("id").first().log_text()


def test_misfire_run_once_coalesces_an_outage(node, cluster):
    job = add_job(cluster, "outage")
    schedule = add_interval(job, 1)
    # An outage of an hour: the schedule's next fire is an hour ago.
    Schedule.objects.filter(pk=schedule.pk).update(
        next_fire_at=schedule.next_fire_at - timedelta(hours=1))
    drive(node, finished(job, 1))
    record = MisfireRecord.objects.get(schedule=schedule)
    assert record.reason == "run_once" and record.policy == "run_once"
    assert record.fire_count >= 3590
    assert Event.objects.filter(kind="misfire", schedule=schedule).exists()
    late = Task.objects.filter(schedule=schedule).order_by("scheduled_for")
    # Every owed fire is either a task or inside the misfire record, never both.
    assert late.first().scheduled_for > record.last_fire_at


def test_misfire_skip_runs_nothing_late(node, cluster):
    job = add_job(cluster, "skippy")
    schedule = add_interval(job, 1, misfire_policy="skip")
    start = db_now()
    Schedule.objects.filter(pk=schedule.pk).update(
        next_fire_at=schedule.next_fire_at - timedelta(minutes=10))
    drive(node, lambda: MisfireRecord.objects.filter(schedule=schedule).exists())
    drive(node, finished(job, 1))
    assert not Task.objects.filter(schedule=schedule,
                                   scheduled_for__lt=start - timedelta(seconds=6)).exists()


def test_dead_members_tasks_are_lost_and_recovered(node, cluster):
    job = add_job(cluster, "victim", kind="shell", command="true")
    ghost = Member.objects.create(cluster=cluster, name="ghost", mode="single", host="h", pid=1,
                                  version="x", state="active")
    task = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="running",
                               member=ghost, scheduled_for=db_now(), started_at=db_now())
    # The ghost's heartbeat is old: declared dead, its task lost and run again here.
    Member.objects.filter(pk=ghost.pk).update(heartbeat_at=db_now() - timedelta(seconds=10))
    node._connected_since -= 10
    drive(node, lambda: Task.objects.filter(retry_of=task, state="succeeded").exists(),
          message="recovery run")
    task.refresh_from_db()
    ghost.refresh_from_db()
    assert ghost.state == "dead" and ghost.declared_dead_by == "n1"
    assert task.state == "lost" and "ghost" in task.error
    recovery = Task.objects.get(retry_of=task)
    assert recovery.trigger == "recovery" and recovery.attempt == 2
    assert recovery.member_id == node.member.pk
    assert Event.objects.filter(kind="member.dead", member=ghost).exists()
    assert Event.objects.filter(kind="task.lost", task=task).exists()


def test_a_member_declared_dead_fires_nothing_and_joins_again(node, cluster):
    job = add_job(cluster, "fenced")
    add_interval(job, 1)
    drive(node, finished(job, 1))
    old = node.member.pk
    Member.objects.filter(pk=old).update(state="dead")
    before = Task.objects.filter(job=job).count()
    Schedule.objects.filter(job=job).update(next_fire_at=db_now() - timedelta(seconds=1))
    # A fire is due, but the claim's fence refuses; the next heartbeat joins as a new member.
    node._next_beat = float("inf")
    node._claim_at = 0.0  # claim now, whatever the node planned
    assert node.step_claim() is False
    assert Task.objects.filter(job=job).count() == before
    node._next_beat = 0
    drive(node, lambda: node.member.pk != old, message="joins again")
    assert Member.objects.get(pk=node.member.pk).state == "active"


def test_stop_lets_tasks_finish_then_stops_the_rest(cluster):
    node = make_node(conf=NodeSettings(heartbeat_interval=0.2, dead_after=1.0, stop_grace=0.5,
                                       log_flush_interval=0.1, idle_in_transaction_timeout=0))
    job = add_job(cluster, "stubborn", command="tests.test_node:block")
    task = job.run_now()
    drive(node, lambda: Task.objects.get(pk=task.pk).state == "running")
    node.stopping = True
    node.shutdown()
    task.refresh_from_db()
    assert task.state == "lost" and "stop" in task.error
    member = Member.objects.get(pk=node.member.pk)
    assert member.state == "stopped" and member.stop_reason == "normal stop"
    assert not Task.objects.filter(state="running").exists()
    # Its job asks for recovery: a queued run waits for the next member.
    recovery = Task.objects.get(retry_of=task)
    assert recovery.state == "queued" and recovery.trigger == "recovery"
    assert recovery.attempt == 2


def test_one_task_per_fire_with_two_members_in_process(cluster):
    """Two active members in one process share the schedules; no fire runs twice."""
    a = make_node(name="a", mode="active")
    b = make_node(name="b", mode="active")
    jobs = [add_job(cluster, f"j{i}") for i in range(20)]
    for job in jobs:
        add_interval(job, 1)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        a.tick()
        b.tick()
    per_fire = (Task.objects.filter(job__in=jobs).values("schedule_id", "scheduled_for")
                .annotate(n=Count("id")).filter(n__gt=1))
    assert not per_fire.exists()
    members = set(Task.objects.filter(job__in=jobs, member__isnull=False)
                  .values_list("member__name", flat=True))
    assert members == {"a", "b"}
    for n in (a, b):
        n.stopping = True
        n.shutdown()


@pytest.mark.parametrize("value", [[], None, [1, 2], "text", {"k": None}, {"k": float("nan")}])
def test_a_data_map_that_is_not_a_json_object_is_refused(cluster, value):
    from django.core.exceptions import ValidationError

    job = Job(cluster=cluster, name="bad-map", kind="shell", command="true", parameters=value)
    with pytest.raises(ValidationError) as err:
        job.full_clean()
    assert "parameters" in err.value.message_dict


def test_a_bad_cron_is_reported_once(cluster):
    from django.core.exceptions import ValidationError

    job = add_job(cluster, "cronny", kind="shell", command="true")
    schedule = Schedule(job=job, kind="cron", cron="61 * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValidationError) as err:
        schedule.full_clean()
    messages = err.value.message_dict
    assert set(messages) == {"cron", "timezone"}, messages
    assert len(messages["cron"]) == 1 and "61" in messages["cron"][0]
    assert "Mars/Olympus" in messages["timezone"][0]


def test_old_history_is_pruned_and_recent_history_kept(cluster):
    from scheduler.retention import prune

    job = add_job(cluster, "history", kind="shell", command="true")
    now = db_now()
    old = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="succeeded",
                              scheduled_for=now)
    recent = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="succeeded",
                                 scheduled_for=now)
    running = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="running",
                                  scheduled_for=now)
    Task.objects.filter(pk__in=[old.pk, running.pk]).update(created_at=now - timedelta(days=40))
    event = Event.record(cluster.pk, Event.Kind.JOB_PAUSED, message="old")
    Event.objects.filter(pk=event.pk).update(created_at=now - timedelta(days=40))
    assert prune(cluster.pk, task_days=30, event_days=30) == 2
    assert set(Task.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
    assert not Event.objects.filter(pk=event.pk).exists()


def test_orders_of_a_dead_member_go_back_to_their_node(node, cluster):
    from scheduler.models import ChainNode, JobChain, Order

    job = add_job(cluster, "step", kind="shell", command="true")
    # Stopped: the orders freed are not processed at once (tests/test_orders.py does that).
    chain = JobChain.objects.create(cluster=cluster, name="etl", stopped=True)
    ChainNode.objects.create(chain=chain, state="extract", job=job, next_state="done",
                             error_state="done")
    ChainNode.objects.create(chain=chain, state="done")
    ghost = Member.objects.create(cluster=cluster, name="ghost", mode="single", host="h", pid=1,
                                  version="x", state="dead")
    running = Order.objects.create(chain=chain, order_id="o1", initial_state="extract",
                                   status="running", member=ghost)
    waiting = Order.objects.create(chain=chain, order_id="o2", initial_state="extract",
                                   status="waiting", member=ghost)
    drive(node, lambda: not Order.objects.filter(member=ghost).exists(), message="orders freed")
    running.refresh_from_db()
    waiting.refresh_from_db()
    assert (running.status, running.state, running.member_id) == ("waiting", "extract", None)
    assert running.version == 2
    assert (waiting.status, waiting.member_id) == ("waiting", None)
    assert Event.objects.filter(kind="order.returned").count() == 2


def test_a_data_map_that_cannot_be_stored_fails_the_task_not_the_node(node, cluster):
    job = add_job(cluster, "bad-data", command="tests.test_node:leave_a_datetime",
                  stateful=True)
    task = job.run_now()
    drive(node, lambda: Task.objects.get(pk=task.pk).finished_at, message="recorded")
    task.refresh_from_db()
    assert task.state == "failed" and "not JSON data" in task.error
    job.refresh_from_db()
    assert job.data_map == {}
    assert node.stats.step_errors == 0 and not node.running


def test_an_operators_cancel_survives_the_death_of_the_member(node, cluster):
    job = add_job(cluster, "cancel-me", kind="shell", command="true")
    ghost = Member.objects.create(cluster=cluster, name="ghost", mode="single", host="h", pid=1,
                                  version="x", state="dead")
    task = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="running",
                               member=ghost, scheduled_for=db_now(), started_at=db_now(),
                               cancel_reason="operator said so")
    drive(node, lambda: Task.objects.get(pk=task.pk).state != "running")
    task.refresh_from_db()
    assert task.state == "cancelled"
    assert not Task.objects.filter(retry_of=task).exists()


def test_a_queued_task_waiting_for_a_slot_does_not_make_the_node_spin(node, cluster):
    job = add_job(cluster, "busy", command="tests.test_node:block")
    job.run_now()
    drive(node, lambda: Task.objects.filter(job=job, state="running").exists())
    job.run_now()  # waits for the running one (max parallel 1)
    claims = node.stats.claims
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        node.tick()
    # Woken by its timers (with these test timings, the dead-member check every 50 ms and a
    # heartbeat every 200 ms: about 25 a second), not in a loop (thousands a second).
    assert node.stats.claims - claims < 60
    assert Task.objects.filter(job=job, state="queued").count() == 1


def test_a_stop_leaves_no_task_running_even_when_a_job_ignores_its_cancel(cluster):
    node = make_node(conf=NodeSettings(heartbeat_interval=0.2, dead_after=1.0, stop_grace=0.2,
                                       log_flush_interval=0.1, idle_in_transaction_timeout=0))
    job = add_job(cluster, "deaf", command="tests.test_node:ignore_cancel", recover_lost=False)
    task = job.run_now()
    drive(node, lambda: Task.objects.get(pk=task.pk).state == "running")
    node.stopping = True
    node.forced = True  # a second signal: no waiting for the kill grace
    node.shutdown()
    task.refresh_from_db()
    assert task.state == "lost" and "stopped before the task ended" in task.error
    assert Member.objects.get(pk=node.member.pk).stop_reason == "forced stop"
    assert not Task.objects.filter(retry_of=task).exists()  # its job asked for no recovery


def test_a_passive_member_whose_epoch_moved_on_fires_nothing(cluster):
    """The epoch fence itself: a member that missed a takeover claims nothing."""
    from scheduler.models import Cluster

    node = make_node(mode="passive", role="primary")
    drive(node, lambda: node.epoch is not None, message="the primary takes the lease")
    job = add_job(cluster, "fenced-passive")
    schedule = add_interval(job)
    drive(node, finished(job, 1))
    # Another member took over meanwhile (its epoch is newer); this one has not noticed yet.
    Cluster.objects.filter(pk=cluster.pk).update(lease_epoch=node.epoch + 1)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=db_now() - timedelta(seconds=1))
    before = Task.objects.filter(job=job).count()
    node._next_beat = float("inf")
    node._claim_at = 0.0  # claim now, whatever the node planned
    assert node.step_claim() is False
    assert Task.objects.filter(job=job).count() == before
    assert node.epoch is None
    assert Member.objects.get(pk=node.member.pk).state == "standby"
    node.stopping = True
    node.shutdown()


def test_a_schedule_that_would_never_fire_is_refused(cluster):
    from django.core.exceptions import ValidationError

    job = add_job(cluster, "past", kind="shell", command="true")
    schedule = Schedule(job=job, kind="once", run_at=db_now() - timedelta(days=1))
    with pytest.raises(ValidationError, match="would never fire"):
        schedule.full_clean()


def test_pausing_takes_schedules_out_of_the_due_scan(cluster):
    job = add_job(cluster, "pausable")
    schedule = add_interval(job)
    job.pause()
    schedule.refresh_from_db()
    assert schedule.next_fire_at is None
    job.resume()
    schedule.refresh_from_db()
    assert schedule.next_fire_at is not None
