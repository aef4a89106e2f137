"""Clusters of real `runscheduler` processes on PostgreSQL: fail-over, fencing, load balancing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count

from scheduler.clock import db_now
from scheduler.membership import request_switchover
from scheduler.models import Cluster, Event, Member, Schedule, Task
from tests.conftest import add_interval, add_job, is_postgres, wait_for

pytestmark = [
    pytest.mark.processes,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL"),
]

# Fast timings for tests: heartbeat 0.2 s, dead after 1.5 s, stagger 0.5 s.
FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5", "--takeover-stagger", "0.5"]




def holder() -> str | None:
    c = Cluster.objects.select_related("lease_holder").get(name="test")
    if c.lease_holder and c.lease_expires_at and c.lease_expires_at > db_now():
        return c.lease_holder.name
    return None


def live(name: str) -> Member | None:
    return Member.objects.filter(cluster__name="test", name=name,
                                 state__in=Member.LIVE_STATES).first()


def in_state(name: str, state: str) -> bool:
    """One read: `live(x) and live(x).state` reads twice and the row may change between."""
    member = live(name)
    return member is not None and member.state == state


def assert_no_double_fires() -> None:
    doubles = list(Task.objects.filter(attempt=1, schedule__isnull=False)
                   .values("schedule_id", "scheduled_for").annotate(n=Count("id"))
                   .filter(n__gt=1))
    assert not doubles, doubles


def assert_no_gaps(schedule: Schedule, interval=timedelta(seconds=1)) -> list:
    """Every fire between the first and the last is in the ledger (attempt 1)."""
    times = list(Task.objects.filter(schedule=schedule, attempt=1).order_by("scheduled_for")
                 .values_list("scheduled_for", flat=True))
    gaps = [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a != interval]
    assert not gaps, gaps
    return times


def passive(start_node, name, *extra, dead_after="1.5"):
    args = ["--cluster", "test", "--node", name, "--exclusive", *extra,
            "--heartbeat-interval", "0.2", "--dead-after", dead_after, "--takeover-stagger", "0.5"]
    return start_node(*args)


def test_passive_cluster_primary_killed_the_first_backup_takes_over(cluster, start_node):
    job = add_job(cluster, "tick")
    schedule = add_interval(job)
    # dead-after 10 s: a takeover well before that proves the crash was seen at once.
    primary = passive(start_node, "p", dead_after="10")
    b1 = passive(start_node, "b1", "--backup", "--backup-precedence", "1", dead_after="10")
    b2 = passive(start_node, "b2", "--backup", "--backup-precedence", "2", dead_after="10")
    wait_for(lambda: holder() == "p", timeout=20, message="primary active")
    wait_for(lambda: live("b1") and live("b2"), timeout=20)
    # Standbys run nothing.
    wait_for(lambda: Task.objects.filter(schedule=schedule).count() >= 3, timeout=10)
    assert not Task.objects.filter(member__name__in=["b1", "b2"]).exists()
    time.sleep(0.5)  # the standbys must have been connected for a while to judge others
    killed_at = db_now()
    primary.signal(signal.SIGKILL)
    wait_for(lambda: holder() == "b1", timeout=8, message="b1 takes over")
    taken = Event.objects.filter(kind="lease.taken", member__name="b1").latest("id")
    assert taken.created_at - killed_at < timedelta(seconds=5), "seen by lock, not heartbeat"
    dead = Member.objects.get(name="p")
    assert dead.state == "dead" and "session ended" in dead.stop_reason
    wait_for(lambda: Task.objects.filter(member__name="b1", state="succeeded").count() >= 3,
             timeout=10, message="b1 fires")
    assert live("b2").state == "standby"
    assert not Task.objects.filter(member__name="b2").exists()
    assert_no_double_fires()
    for node in (b1, b2):
        node.signal(signal.SIGTERM)
        node.wait()
    # Between the primary's last fire and b1's first, the missed fires were run or recorded.
    times = assert_no_gaps(schedule) if not schedule.misfires.exists() else None
    assert times is None or len(times) > 5


def test_passive_cluster_hung_primary_is_fenced(cluster, start_node):
    job = add_job(cluster, "tick")
    add_interval(job)
    primary = passive(start_node, "p")
    backup = passive(start_node, "b", "--backup")
    wait_for(lambda: holder() == "p" and live("b"), timeout=20, message="cluster up")
    wait_for(lambda: Task.objects.filter(member__name="p").count() >= 2, timeout=10)
    primary.signal(signal.SIGSTOP)
    stopped_at = db_now()
    wait_for(lambda: holder() == "b", timeout=10, message="backup takes over from a hung primary")
    takeover = Event.objects.filter(kind="lease.taken", member__name="b").latest("id").created_at
    # Within dead-after plus a heartbeat or two (and the stagger of rank 0 is none).
    assert takeover - stopped_at < timedelta(seconds=1.5 + 1.0)
    primary.signal(signal.SIGCONT)
    # The woken primary learns it was declared dead and joins again as a standby.
    wait_for(lambda: in_state("p", "standby"), timeout=15,
             message="old primary back as standby")
    time.sleep(1.0)
    fenced = Task.objects.filter(member__name="p", created_at__gt=takeover)
    assert not fenced.exists(), list(fenced.values("id", "scheduled_for", "created_at"))
    assert holder() == "b"
    assert_no_double_fires()
    for node in (primary, backup):
        node.signal(signal.SIGTERM)
        node.wait()


def test_normal_stop_of_the_primary_does_not_fail_over(cluster, start_node):
    job = add_job(cluster, "tick")
    add_interval(job)
    primary = passive(start_node, "p")
    backup = passive(start_node, "b", "--backup")
    wait_for(lambda: holder() == "p" and live("b"), timeout=20)
    primary.signal(signal.SIGTERM)
    assert primary.wait() == 0
    stopped = db_now()
    time.sleep(3.0)  # twice dead-after: a backup that were to take over would have by now
    assert live("b").state == "standby"
    assert not Task.objects.filter(created_at__gt=stopped).exists()
    # The primary comes back and takes the lease again.
    passive(start_node, "p")
    wait_for(lambda: holder() == "p", timeout=20, message="primary back in charge")
    wait_for(lambda: Task.objects.filter(created_at__gt=stopped, member__name="p").exists(),
             timeout=10)
    backup.signal(signal.SIGTERM)
    backup.wait()


def test_backups_take_over_in_precedence_order_not_name_order(cluster, start_node):
    primary = passive(start_node, "p")
    passive(start_node, "aa", "--backup", "--backup-precedence", "5")
    passive(start_node, "zz", "--backup", "--backup-precedence", "1")
    wait_for(lambda: holder() == "p" and live("aa") and live("zz"), timeout=20)
    time.sleep(0.5)
    primary.signal(signal.SIGKILL)
    wait_for(lambda: holder() is not None and holder() != "p", timeout=10)
    assert holder() == "zz"
    time.sleep(1.0)  # aa's stagger has passed: it must still stand by
    assert holder() == "zz" and live("aa").state == "standby"


def test_switchover_hands_the_lease_to_a_named_standby_and_back(cluster, start_node):
    job = add_job(cluster, "tick")
    add_interval(job)
    passive(start_node, "p")
    passive(start_node, "b", "--backup")
    wait_for(lambda: holder() == "p" and live("b"), timeout=20)
    request_switchover("test", "b", actor="alice")
    wait_for(lambda: holder() == "b", timeout=10, message="switched to b")
    assert live("p").state == "standby"
    since = db_now()
    wait_for(lambda: Task.objects.filter(member__name="b", created_at__gt=since).exists(),
             timeout=10)
    request_switchover("test", None, actor="alice")  # back to the primary
    wait_for(lambda: holder() == "p", timeout=10, message="back to p")
    assert Event.objects.filter(kind="switchover.requested", actor="alice").count() == 2
    assert_no_double_fires()


def test_a_returning_primary_with_reclaim_takes_the_lease_back(cluster, start_node):
    primary = passive(start_node, "p")
    passive(start_node, "b", "--backup")
    wait_for(lambda: holder() == "p" and live("b"), timeout=20)
    time.sleep(0.5)
    primary.signal(signal.SIGKILL)
    wait_for(lambda: holder() == "b", timeout=10)
    # Without --reclaim the returning primary waits; with it, it takes the lease back.
    passive(start_node, "p", "--reclaim")
    wait_for(lambda: holder() == "p", timeout=15, message="primary reclaims")
    assert live("b").state == "standby"


def test_active_cluster_member_killed_no_fire_doubled_or_missed(cluster, start_node):
    schedules = [add_interval(add_job(cluster, f"j{i}")) for i in range(30)]
    slow = add_job(cluster, "slow", kind="shell", command="sleep 3")
    slow_task = None
    nodes = {name: start_node("--cluster", "test", "--node", name, "--distributed-orders", *FAST)
             for name in ("a", "b", "c")}
    wait_for(lambda: all(live(n) for n in nodes), timeout=20)
    wait_for(lambda: Task.objects.filter(state="succeeded").count() >= 150, timeout=30)
    # A long task on each member, so the kill catches one running.
    for _ in range(3):
        slow_task = slow.run_now()
    wait_for(lambda: Task.objects.filter(job=slow, state="running").count() == 1, timeout=10)
    victim_name = Task.objects.get(job=slow, state="running").member.name
    nodes[victim_name].signal(signal.SIGKILL)
    wait_for(lambda: Member.objects.get(name=victim_name).state == "dead", timeout=10)
    time.sleep(3)
    for name, node in nodes.items():
        if name != victim_name:
            node.signal(signal.SIGTERM)
            assert node.wait() == 0, node.output()
    assert_no_double_fires()
    for schedule in schedules:
        assert_no_gaps(schedule)
    lost = Task.objects.filter(state="lost", member__name=victim_name)
    assert lost.exists()
    for task in lost:
        assert Task.objects.filter(retry_of=task, trigger="recovery").exists()
    assert slow_task is not None


def test_a_member_whose_clock_is_hours_off_fires_on_the_database_clock(cluster, start_node):
    if not shutil.which("faketime"):
        pytest.skip("faketime is not installed (apt-get install faketime)")
    job = add_job(cluster, "tick")
    schedule = add_interval(job)
    # Only the wall clock is off, as on a machine with a wrong clock: the monotonic clock
    # (which libfaketime would otherwise shift too, and stall timed waits) is left alone.
    node = start_node("--cluster", "test", "--node", "skewed", *FAST,
                      prefix=["faketime", "-f", "+3h"],
                      env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    wait_for(lambda: Task.objects.filter(schedule=schedule, state="succeeded").count() >= 5,
             timeout=20, message="fires from the skewed member")
    node.signal(signal.SIGTERM)
    node.wait()
    member = Member.objects.get(name="skewed")
    assert abs(member.clock_skew_ms - 3 * 3600 * 1000) < 60_000, member.clock_skew_ms
    tasks = Task.objects.filter(schedule=schedule)
    # On the database's clock: never early, and not three hours off either way.
    assert max(t.lateness for t in tasks if t.started_at) < timedelta(minutes=1)
    assert min(t.lateness for t in tasks if t.started_at) >= timedelta(0)
    assert_no_gaps(schedule)


def test_jobs_with_an_affinity_run_only_on_matching_members(cluster, start_node):
    gpu = add_job(cluster, "gpu-job", affinity="gpu")
    pinned = add_job(cluster, "pinned", affinity="b")
    add_interval(gpu)
    add_interval(pinned)
    start_node("--cluster", "test", "--node", "a", "--distributed-orders", "--label", "gpu", *FAST)
    start_node("--cluster", "test", "--node", "b", "--distributed-orders", *FAST)
    wait_for(lambda: Task.objects.filter(state="succeeded").count() >= 10, timeout=20)
    started = Task.objects.filter(member__isnull=False)  # queued ones have no member yet
    assert set(started.filter(job=gpu).values_list("member__name", flat=True)) == {"a"}
    assert set(started.filter(job=pinned).values_list("member__name", flat=True)) == {"b"}


@pytest.mark.skipif(not os.environ.get("OPSCENTER_TEST_RESTART_DATABASE"),
                    reason="restarts the PostgreSQL server: set OPSCENTER_TEST_RESTART_DATABASE=1")
def test_database_restart_under_a_running_cluster(cluster, start_node):
    pg_version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True)
    if pg_version.returncode or not shutil.which("pg_ctlcluster"):
        pytest.skip("pg_ctlcluster is not available to restart the server")
    schedules = [add_interval(add_job(cluster, f"j{i}")) for i in range(5)]
    nodes = [start_node("--cluster", "test", "--node", n, "--distributed-orders", *FAST)
             for n in ("a", "b")]
    wait_for(lambda: Task.objects.filter(state="succeeded").count() >= 20, timeout=20)
    connection.close()
    restart = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version.stdout.split()[0], "main",
         "restart"], capture_output=True, text=True, timeout=60)
    assert restart.returncode == 0, restart.stderr
    restarted = db_now()
    wait_for(lambda: Task.objects.filter(state="succeeded", started_at__gt=restarted).count()
             >= 20, timeout=30, message="firing again after the restart")
    for node in nodes:
        assert node.proc.poll() is None, node.output()  # weather, not a reason to exit
    for node in nodes:
        node.signal(signal.SIGTERM)
        assert node.wait() == 0
    assert_no_double_fires()
    # Nobody was declared dead because the database went away for a moment.
    assert not Member.objects.filter(state="dead").exists()
    for schedule in schedules:
        times = list(Task.objects.filter(schedule=schedule).values_list("scheduled_for",
                                                                        flat=True))
        assert len(times) == len(set(times))


def test_a_connection_lost_inside_a_claim_is_weather_and_the_member_lock_comes_back(
        cluster, monkeypatch):
    """The claim's prepared statements run on a raw psycopg cursor; a lost connection there
    must still be handled as weather: reconnect, configure the session, take the member's
    advisory lock again (without it the others would soon declare the member dead)."""
    import threading

    from scheduler import ledger
    from scheduler.membership import ADVISORY_NAMESPACE, MemberOptions
    from scheduler.node import Node, NodeSettings

    node = Node(MemberOptions(cluster="test", name="n1", mode="active", workers=4),
                NodeSettings(heartbeat_interval=0.2, dead_after=5.0,
                             idle_in_transaction_timeout=0))
    node.start()
    job = add_job(cluster, "tick")
    add_interval(job, 1)
    real_fence, real_claim = ledger.check_fence, ledger.claim
    killed: list[int] = []
    claiming: list[bool] = []

    def claim(**kwargs):
        claiming.append(True)
        try:
            return real_claim(**kwargs)
        finally:
            claiming.pop()

    def fence_then_lose_the_connection(*args, **kwargs):
        now = real_fence(*args, **kwargs)
        if claiming and not killed:
            pid = connection.connection.info.backend_pid
            killed.append(pid)

            def terminate():  # another thread: another connection
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                    # The signal is asynchronous: wait until the session is gone, so that
                    # the claim's next statement (a prepared one) is the one that finds out.
                    wait_for(lambda: not cursor.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone(),
                        timeout=5, message="the session ends")
                connection.close()

            t = threading.Thread(target=terminate)
            t.start()
            t.join()
        return now

    monkeypatch.setattr(ledger, "check_fence", fence_then_lose_the_connection)
    monkeypatch.setattr(ledger, "claim", claim)
    deadline = time.monotonic() + 15
    while not (killed and Task.objects.filter(job=job, state="succeeded").exists()):
        assert time.monotonic() < deadline, "no fire ran after the connection came back"
        node.tick()
    assert node.stats.db_errors >= 1 and node.stats.step_errors == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('application_name'), "
                       "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND pid = pg_backend_pid() AND classid = %s AND objid = %s)",
                       [ADVISORY_NAMESPACE, node.member.pk])
        pid, app, locks = cursor.fetchone()
    assert pid != killed[0]
    assert app == "opscenter test/n1"
    assert locks == 1
    node.stopping = True
    node.shutdown()
