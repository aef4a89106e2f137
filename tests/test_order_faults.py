"""Orders through real `runscheduler` processes on PostgreSQL under the faults fires are put
through: a member frozen (SIGSTOP) past its death, the database restarted, a member killed
(kill -9) while it holds orders of a chain that is not distributed.

Every step's job appends a line to a file when it is entered (task id, member, attempt), so
the tests count entries, not only task rows. What each test asserts (`assert_sound`):
every order finished; one attempt-1 task per (order, state), and one per (order, state,
step); exactly one successful task per (order, state); no task's job entered twice; a step
entered more than once only when an earlier task of it ended lost (its member died while it
ran) and then ran again as the next attempt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count

from scheduler.clock import db_now
from scheduler.models import Member, Order, Task
from tests.conftest import add_job, is_postgres, wait_for
from tests.test_order_processes import FAST, chain_of

pytestmark = [
    pytest.mark.processes,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL"),
]

STATES = ("one", "two", "three")
ENTER = "tests.test_order_faults:enter"
DEAD_AFTER = 1.5  # FAST's --dead-after


def enter(ctx) -> None:
    """A step's job: say that it was entered (one short O_APPEND write: lines of concurrent
    entries do not mix), then take `sleep` seconds, or less when cancelled."""
    line = f"{ctx.task_id} {ctx.member} {ctx.attempt}\n".encode()
    fd = os.open(ctx.parameters["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    ctx.cancelled.wait(float(ctx.parameters.get("sleep", 0)))


def three_step_chain(cluster, name: str, log: Path, sleep: float, distributed: bool,
                     orders: int):
    jobs = [add_job(cluster, f"{name}-{s}", command=ENTER,
                    parameters={"log": str(log), "sleep": sleep}, max_parallel=1000)
            for s in STATES]
    chain = chain_of(cluster, name, list(zip(STATES, jobs, strict=True)),
                     distributed=distributed)
    Order.objects.bulk_create([
        Order(chain=chain, order_id=f"o{i}", initial_state="one", state="one")
        for i in range(orders)])
    return chain


def entries(log: Path) -> Counter:
    """Entries per task id."""
    if not log.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines() if line)


def all_finished(chain, n: int) -> bool:
    return Order.objects.filter(chain=chain, status="finished").count() == n


def assert_sound(chain, n: int, log: Path) -> dict[int, int]:
    """The ledger and the entries after every order ended; returns the entries per task."""
    statuses = dict(Order.objects.filter(chain=chain).values_list("status")
                    .annotate(c=Count("id")))
    assert statuses == {"finished": n}, statuses
    tasks = Task.objects.filter(order__chain=chain)
    firsts = list(tasks.filter(attempt=1).values("order_id", "order_state")
                  .annotate(c=Count("id")).filter(c__gt=1))
    assert not firsts, f"steps run twice as attempt 1: {firsts[:10]}"
    assert tasks.filter(attempt=1).count() == 3 * n
    per_step = list(tasks.filter(attempt=1).values("order_id", "order_state", "order_step")
                    .annotate(c=Count("id")).filter(c__gt=1))
    assert not per_step, per_step
    # Each (order, state) is one step number: a step's retry or recovery is the same step.
    numbers = list(tasks.values("order_id", "order_state")
                   .annotate(c=Count("order_step", distinct=True)).filter(c__gt=1))
    assert not numbers, numbers
    wins = list(tasks.filter(state="succeeded").values("order_id", "order_state")
                .annotate(c=Count("id")))
    assert len(wins) == 3 * n and all(w["c"] == 1 for w in wins), \
        [w for w in wins if w["c"] != 1][:10]
    seen = entries(log)
    twice = {t: c for t, c in seen.items() if c > 1}
    assert not twice, f"tasks whose job was entered twice: {twice}"
    # Every successful step was entered; an extra entry of a step is a task that ended lost.
    by_task = {t["id"]: t for t in tasks.values("id", "order_id", "order_state", "state")}
    per_step_entries = Counter((by_task[t]["order_id"], by_task[t]["order_state"])
                               for t in seen)
    for task in by_task.values():
        if task["state"] == "succeeded":
            assert seen[task["id"]] == 1, f"task {task['id']} succeeded without being entered"
    extra = [t for t in seen if by_task[t]["state"] != "succeeded"]
    assert all(by_task[t]["state"] == "lost" for t in extra), \
        [(t, by_task[t]["state"]) for t in extra]
    assert sum(per_step_entries.values()) == 3 * n + len(extra)
    return dict(seen)


def process_state(pid: int) -> str:
    """The state letter of a process (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_member_frozen_mid_run_enters_no_step_it_lost(cluster, start_node, tmp_path):
    """One of three active members freezes right after an order claim committed (its steps'
    tasks are running on it, their jobs not yet entered), stays frozen past dead-after, and
    is woken: the others recover its steps as attempt 2, and the start fence keeps the woken
    member from entering any of them."""
    log = tmp_path / "entries"
    n = 300
    chain = three_step_chain(cluster, "frozen", log, sleep=0.03, distributed=True, orders=n)
    args = ["--cluster", "test", "--distributed-orders", "--workers", "6", *FAST]
    start_node("--node", "a", *args)
    start_node("--node", "b", *args)
    # The victim freezes at its 4th order claim made while nothing else ran on it (see the
    # hook in node.py): one worker makes every claim such a claim. It then holds a claimed
    # step whose job it has not entered, and no other: a step in flight at a freeze has been
    # entered already and may run again (the audit's ran_unowned says so); that is not this
    # test's case.
    victim = start_node("--node", "c", *args, "--workers", "1",
                        env={"OPSCENTER_TEST_SIGSTOP_AFTER_ORDER_CLAIM": "4"})
    wait_for(lambda: process_state(victim.pid) == "T", timeout=20,
             message="member c frozen after an order claim")
    frozen_at = time.monotonic()
    old = Member.objects.get(name="c")
    held = list(Task.objects.filter(member=old, state="running").values_list("id", flat=True))
    assert held, "the frozen member holds steps"
    assert Order.objects.filter(chain=chain).exclude(status="finished").count() > 50, \
        "frozen in the middle of the run"
    wait_for(lambda: Member.objects.get(pk=old.pk).state == "dead", timeout=10,
             message="the frozen member declared dead")
    time.sleep(max(DEAD_AFTER + 2.0 - (time.monotonic() - frozen_at), 0))  # the fault itself
    victim.signal(signal.SIGCONT)
    wait_for(lambda: all_finished(chain, n), timeout=60, interval=0.2,
             message="every order finished")
    wait_for(lambda: Member.objects.filter(name="c", state="active").exclude(pk=old.pk)
             .exists(), timeout=10, message="the woken member joins again")
    seen = assert_sound(chain, n, log)
    # The steps it held were lost, never entered, and each ran again once, as attempt 2.
    for task in Task.objects.filter(pk__in=held):
        assert task.state == "lost", (task.pk, task.state)
        assert task.pk not in seen, f"the woken member entered step task {task.pk}"
        again = Task.objects.get(retry_of=task)
        assert (again.attempt, again.state, again.order_step) == (2, "succeeded",
                                                                   task.order_step)
    assert not Task.objects.filter(ran_unowned_at__isnull=False).exists()
    # Nothing it claimed after its death: every task of the old member was claimed before.
    assert not Task.objects.filter(member=old).exclude(pk__in=held).filter(
        claimed_at__gte=Member.objects.get(pk=old.pk).stopped_at).exists()
    assert len(seen) == 3 * n  # each step entered exactly once
    print(f"\nfrozen member c held {len(held)} step(s); all recovered as attempt 2")


def test_a_member_frozen_at_any_moment_leaves_no_silent_double(cluster, start_node, tmp_path):
    """The same freeze from outside, at whatever moment: steps in flight on the frozen member
    had been entered already, so their recovery (attempt 2) enters them once more. Still no
    second attempt 1, every order finished, and every such double is on the audit: the woken
    member writes down each lost task whose job it had entered (ran_unowned_at)."""
    log = tmp_path / "entries"
    n = 300
    chain = three_step_chain(cluster, "stopped", log, sleep=0.03, distributed=True, orders=n)
    args = ["--cluster", "test", "--distributed-orders", "--workers", "6", *FAST]
    start_node("--node", "a", *args)
    start_node("--node", "b", *args)
    victim = start_node("--node", "c", *args)
    wait_for(lambda: Task.objects.filter(order__chain=chain, member__name="c",
                                         state="succeeded").count() >= 30, timeout=20,
             message="member c processes steps")
    victim.signal(signal.SIGSTOP)
    old = Member.objects.get(name="c")
    time.sleep(DEAD_AFTER + 2.0)  # the fault itself
    assert Member.objects.get(pk=old.pk).state == "dead"
    victim.signal(signal.SIGCONT)
    wait_for(lambda: all_finished(chain, n), timeout=60, interval=0.2,
             message="every order finished")
    wait_for(lambda: Member.objects.filter(name="c", state="active").exclude(pk=old.pk)
             .exists(), timeout=10, message="the woken member joins again")
    seen = assert_sound(chain, n, log)
    lost = Task.objects.filter(member=old, state="lost")
    entered = set(lost.filter(pk__in=seen).values_list("pk", flat=True))
    wait_for(lambda: set(lost.filter(ran_unowned_at__isnull=False).values_list("pk", flat=True))
             == entered, timeout=10, message="every lost task that was entered on the audit")
    assert not Task.objects.filter(ran_unowned_at__isnull=False).exclude(pk__in=entered).exists()
    print(f"\nfrozen member c: {lost.count()} step(s) lost, {len(entered)} of them entered "
          "before the freeze (run again, on the audit)")


def test_a_killed_member_s_orders_are_adopted_only_once_it_is_dead(cluster, start_node,
                                                                  tmp_path):
    """Orders of a chain that is not distributed stay on the member that took their first
    step. kill -9 of one of three: its orders go on elsewhere only after it is declared dead
    (its running steps as attempt 2, its waiting orders adopted), none stuck, none doubled."""
    log = tmp_path / "entries"
    n = 90
    chain = three_step_chain(cluster, "sticky", log, sleep=0.15, distributed=False, orders=n)
    args = ["--cluster", "test", "--distributed-orders", "--workers", "5", *FAST]
    nodes = {name: start_node("--node", name, *args) for name in ("a", "b", "c")}
    wait_for(lambda: Task.objects.filter(order__chain=chain, member__name="c",
                                         order_step=2).exists()
             and Task.objects.filter(order__chain=chain, member__name="c", state="running")
             .exists(), timeout=20, message="member c runs second steps of its orders")
    victim = Member.objects.get(name="c")
    killed_at = db_now()
    nodes["c"].signal(signal.SIGKILL)
    wait_for(lambda: all_finished(chain, n), timeout=60, interval=0.2,
             message="every order finished")
    assert_sound(chain, n, log)
    victim.refresh_from_db()
    assert victim.state == "dead"
    dead_at = victim.stopped_at
    assert dead_at is not None and dead_at >= killed_at
    held = set(Task.objects.filter(member=victim).values_list("order_id", flat=True))
    assert held
    # Before the death no order changed member: each order's steps up to then on one member.
    before = (Task.objects.filter(order__chain=chain, claimed_at__lt=dead_at)
              .values("order_id").annotate(m=Count("member", distinct=True)).filter(m__gt=1))
    assert not before.exists(), list(before[:10])
    # The victim's orders went on elsewhere, and only after it was declared dead.
    elsewhere = Task.objects.filter(order_id__in=held).exclude(member=victim)
    early = elsewhere.filter(claimed_at__lt=dead_at)
    assert not early.exists(), list(early.values("id", "order_id", "claimed_at")[:10])
    assert elsewhere.exists()
    lost = Task.objects.filter(member=victim, state="lost")
    for task in lost:
        again = Task.objects.get(retry_of=task)
        assert (again.attempt, again.state) == (task.attempt + 1, "succeeded")
    print(f"\nkilled member c held {len(held)} order(s); {lost.count()} step(s) in flight")


@pytest.mark.skipif(not os.environ.get("OPSCENTER_TEST_RESTART_DATABASE"),
                    reason="restarts the PostgreSQL server: set OPSCENTER_TEST_RESTART_DATABASE=1")
def test_a_database_restart_mid_run_doubles_no_step(cluster, start_node, tmp_path):
    """The database restarts while 300 orders go through a distributed chain on three
    members: weather for each of them; every step runs once, every order finishes."""
    pg_version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True)
    if pg_version.returncode or not shutil.which("pg_ctlcluster"):
        pytest.skip("pg_ctlcluster is not available to restart the server")
    log = tmp_path / "entries"
    n = 300
    chain = three_step_chain(cluster, "restart", log, sleep=0.03, distributed=True, orders=n)
    args = ["--cluster", "test", "--distributed-orders", "--workers", "6", *FAST]
    nodes = [start_node("--node", name, *args) for name in ("a", "b", "c")]
    wait_for(lambda: Order.objects.filter(chain=chain, status="finished").count() >= 50,
             timeout=20, message="orders going through")
    connection.close()
    restart = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version.stdout.split()[0], "main",
         "restart"], capture_output=True, text=True, timeout=60)
    assert restart.returncode == 0, restart.stderr
    unfinished = Order.objects.filter(chain=chain).exclude(status="finished").count()
    assert unfinished > 0, "the restart came after the run"
    wait_for(lambda: all_finished(chain, n), timeout=60, interval=0.2,
             message="every order finished after the restart")
    for node in nodes:
        assert node.proc.poll() is None, node.output()  # weather, not a reason to exit
    assert_sound(chain, n, log)
    assert not Task.objects.filter(ran_unowned_at__isnull=False).exists()
    # Nobody was declared dead because the database went away for a moment.
    assert not Member.objects.filter(state="dead").exists()
    print(f"\n{unfinished} of {n} orders unfinished at the restart")
