"""Orders through real `runscheduler` processes on PostgreSQL: the error path, stopped and
skipped nodes, suspend while a step runs, 1,000 orders over three active members, kill -9
mid-step, a stalled member of a passive cluster fenced."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from django.db.models import Count

from scheduler.clock import db_now
from scheduler.eventlog import Actor
from scheduler.models import ChainNode, Event, JobChain, Member, Order, Task
from tests.conftest import add_job, is_postgres, wait_for

pytestmark = [
    pytest.mark.processes,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL"),
]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5", "--takeover-stagger", "0.5"]
OP = Actor("otto", source="cli")


def chain_of(cluster, name, steps, **kw) -> JobChain:
    """steps: (state, job) pairs in a line; each step's error state is `error`."""
    chain = JobChain.objects.create(cluster=cluster, name=name, **kw)
    for i, (state, job) in enumerate(steps):
        nxt = steps[i + 1][0] if i + 1 < len(steps) else "done"
        ChainNode.objects.create(chain=chain, state=state, job=job, next_state=nxt,
                                 error_state="error", position=i)
    ChainNode.objects.create(chain=chain, state="done", position=90)
    ChainNode.objects.create(chain=chain, state="error", position=91)
    assert chain.graph_problems() == []
    return chain


def assert_each_step_once() -> None:
    doubles = list(Task.objects.filter(attempt=1, order__isnull=False)
                   .values("order_id", "order_state").annotate(n=Count("id")).filter(n__gt=1))
    assert not doubles, doubles


def test_a_failing_second_step_takes_the_error_path(cluster, start_node):
    ok = add_job(cluster, "ok", kind="shell", command="true")
    bad = add_job(cluster, "bad", kind="shell", command="exit 3")
    chain = chain_of(cluster, "three", [("one", ok), ("two", bad), ("three", ok)])
    order = Order.add(chain, "o1", actor=OP)
    start_node("--cluster", "test", "--node", "n", *FAST)
    wait_for(lambda: Order.objects.get(pk=order.pk).is_done, timeout=20, message="order done")
    order.refresh_from_db()
    assert (order.status, order.state) == ("failed", "error")
    assert list(Task.objects.filter(order=order).order_by("id")
                .values_list("order_state", "state", "exit_code")) == [
        ("one", "succeeded", 0), ("two", "failed", 3)]
    assert Event.objects.filter(kind="order.failed", data__order=order.pk).exists()


def test_suspend_while_a_step_runs_then_the_order_waits(cluster, start_node, tmp_path):
    gate = tmp_path / "go"
    slow = add_job(cluster, "slow", kind="shell",
                   command=f"while [ ! -e {gate} ]; do sleep 0.05; done")
    ok = add_job(cluster, "ok", kind="shell", command="true")
    chain = chain_of(cluster, "sus", [("a", slow), ("b", ok)])
    order = Order.add(chain, "o1", actor=OP)
    start_node("--cluster", "test", "--node", "n", *FAST)
    wait_for(lambda: Task.objects.filter(order=order, state="running").exists(), timeout=20)
    order.refresh_from_db()
    assert order.suspend(OP) is True
    gate.touch()
    wait_for(lambda: Order.objects.get(pk=order.pk).status == "suspended", timeout=10)
    order.refresh_from_db()
    assert order.state == "b"
    # The node does not take it while it is suspended (a heartbeat's claims at least).
    later = db_now() + timedelta(seconds=0.6)
    wait_for(lambda: Member.objects.get(name="n").heartbeat_at > later, timeout=5)
    assert not Task.objects.filter(order=order, order_state="b").exists()
    order.resume(OP)
    wait_for(lambda: Order.objects.get(pk=order.pk).status == "finished", timeout=10)


def test_a_stopped_node_holds_orders_and_a_skipped_node_lets_them_pass(cluster, start_node):
    ok = add_job(cluster, "ok", kind="shell", command="true")
    chain = chain_of(cluster, "gates", [("one", ok), ("two", ok), ("three", ok)])
    chain.nodes.get(state="two").set_action("skipped", OP)
    chain.nodes.get(state="three").set_action("stopped", OP)
    order = Order.add(chain, "o1", actor=OP)
    start_node("--cluster", "test", "--node", "n", *FAST)
    # Step one runs, two is passed without a task, the order waits at the stopped three.
    wait_for(lambda: Order.objects.get(pk=order.pk).state == "three", timeout=20,
             message="the order reached the stopped node")
    later = db_now() + timedelta(seconds=0.6)
    wait_for(lambda: Member.objects.get(name="n").heartbeat_at > later, timeout=5)
    order.refresh_from_db()
    assert order.status == "waiting"
    assert order.waiting_reason() == "node three is stopped"
    assert list(Task.objects.filter(order=order).values_list("order_state", flat=True)) == [
        "one"]
    chain.nodes.get(state="three").set_action("active", OP)
    wait_for(lambda: Order.objects.get(pk=order.pk).status == "finished", timeout=10,
             message="the order went on once the node was active")
    assert list(Task.objects.filter(order=order).order_by("id")
                .values_list("order_state", flat=True)) == ["one", "three"]
    assert_each_step_once()


def test_a_thousand_orders_over_three_active_members_each_step_once(cluster, start_node):
    one = add_job(cluster, "one", max_parallel=100)
    two = add_job(cluster, "two", max_parallel=100)
    chain = chain_of(cluster, "bulk", [("one", one), ("two", two)], distributed=True)
    Order.objects.bulk_create([
        Order(chain=chain, order_id=f"o{i}", initial_state="one", state="one")
        for i in range(1000)])
    for name in ("a", "b", "c"):
        start_node("--cluster", "test", "--node", name, "--distributed-orders",
                   "--workers", "30", *FAST)
    wait_for(lambda: Order.objects.filter(chain=chain, status="finished").count() == 1000,
             timeout=120, interval=0.5, message="1,000 orders finished")
    assert_each_step_once()
    assert Task.objects.filter(order__chain=chain).count() == 2000
    spread = dict(Task.objects.filter(order__chain=chain).values_list("member__name")
                  .annotate(n=Count("id")))
    assert set(spread) == {"a", "b", "c"}, spread
    assert min(spread.values()) >= 100, spread
    print(f"\n1,000 orders x 2 steps: steps per member {spread}")


def test_a_member_killed_mid_step_the_step_runs_again_elsewhere(cluster, start_node):
    slow = add_job(cluster, "slow", kind="shell", command="sleep 1", max_parallel=50)
    ok = add_job(cluster, "ok", kind="shell", command="true", max_parallel=50)
    chain = chain_of(cluster, "kill", [("slow", slow), ("ok", ok)], distributed=True)
    for i in range(30):
        Order.add(chain, f"o{i}", actor=OP)
    nodes = {name: start_node("--cluster", "test", "--node", name, "--distributed-orders",
                              "--workers", "10", *FAST) for name in ("a", "b", "c")}
    wait_for(lambda: Task.objects.filter(order__chain=chain, state="running",
                                         order_state="slow").values("member").distinct()
             .count() >= 2, timeout=20, message="slow steps running on two members")
    victim = Task.objects.filter(order__chain=chain, state="running", order_state="slow") \
        .select_related("member").first().member.name
    nodes[victim].signal(signal.SIGKILL)
    wait_for(lambda: Order.objects.filter(chain=chain, status="finished").count() == 30,
             timeout=60, interval=0.2, message="every order finished")
    assert_each_step_once()
    lost = Task.objects.filter(order__chain=chain, state="lost", member__name=victim)
    assert lost.exists()
    for task in lost:
        again = Task.objects.get(retry_of=task)
        assert (again.order_id, again.order_step, again.attempt, again.state) == (
            task.order_id, task.order_step, task.attempt + 1, "succeeded")
        assert again.member.name != victim
    # Every (order, state) succeeded exactly once.
    wins = (Task.objects.filter(order__chain=chain, state="succeeded")
            .values("order_id", "order_state").annotate(n=Count("id")))
    assert len(wins) == 60 and all(w["n"] == 1 for w in wins)


def test_a_stalled_passive_member_moves_no_order_afterwards(cluster, start_node):
    slow = add_job(cluster, "slow", kind="shell", command="sleep 0.3", max_parallel=50)
    chain = chain_of(cluster, "pass", [("a", slow), ("b", slow), ("c", slow)])
    for i in range(20):
        Order.add(chain, f"o{i}", actor=OP)
    args = ["--cluster", "test", "--exclusive", *FAST]
    primary = start_node("--node", "p", *args)
    start_node("--node", "b", "--backup", *args)
    wait_for(lambda: Task.objects.filter(order__chain=chain, member__name="p").count() >= 5,
             timeout=20, message="the primary processes orders")
    primary.signal(signal.SIGSTOP)
    wait_for(lambda: Event.objects.filter(kind="lease.taken", member__name="b").exists(),
             timeout=10, message="backup takes over")
    takeover = Event.objects.filter(kind="lease.taken", member__name="b").latest("id").created_at
    primary.signal(signal.SIGCONT)
    wait_for(lambda: Order.objects.filter(chain=chain, status="finished").count() == 20,
             timeout=60, interval=0.2, message="every order finished on the backup")
    late = Task.objects.filter(order__chain=chain, member__name="p", created_at__gt=takeover)
    assert not late.exists(), list(late.values("id", "order_state", "created_at"))
    moved_late = Event.objects.filter(kind__in=("order.moved", "order.finished"),
                                      member__name="p", created_at__gt=takeover)
    assert not moved_late.exists()
    assert_each_step_once()
