"""Job chains and orders: the model API and the processing, driven in this process."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db.models import Count

from scheduler import chaingraph, ledger
from scheduler.clock import db_now
from scheduler.eventlog import Actor
from scheduler.models import ChainNode, Event, JobChain, Member, Order, Task
from tests.conftest import add_job, database_url, is_postgres
from tests.test_node import drive, make_node

OP = Actor("otto", source="console")

# Python job callables (tests.test_orders:...).
SEEN: list[dict] = []
RELEASE = threading.Event()


def ok(ctx):
    SEEN.append(dict(ctx.parameters))


def boom(ctx):
    raise RuntimeError("step failed")


def hold(ctx):
    for _ in range(400):
        if RELEASE.wait(0.05) or ctx.cancelled.is_set():
            return


@pytest.fixture(autouse=True)
def _reset():
    SEEN.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


@pytest.fixture
def node(cluster):
    n = make_node()
    yield n
    RELEASE.set()
    n.stopping = True
    n.shutdown()


def make_chain(cluster, name="etl", steps=(("a", "ok"), ("b", "ok"), ("c", "ok")),
               **chain_kw) -> JobChain:
    """A linear chain: each step's next is the following one, its error state `error`;
    then the end nodes `done` and `error`."""
    chain = JobChain.objects.create(cluster=cluster, name=name, **chain_kw)
    jobs = {}
    for i, (state, func) in enumerate(steps):
        if func not in jobs:
            jobs[func] = add_job(cluster, f"{name}-{func}", command=f"tests.test_orders:{func}",
                                 parameters={"from_job": "j", "shared": "job"})
        nxt = steps[i + 1][0] if i + 1 < len(steps) else "done"
        ChainNode.objects.create(chain=chain, state=state, job=jobs[func], next_state=nxt,
                                 error_state="error", position=i)
    ChainNode.objects.create(chain=chain, state="done", position=90)
    ChainNode.objects.create(chain=chain, state="error", position=91)
    return chain


def start_a_step(order, state="running") -> Task:
    """As a claim does: the order runs its next step, whose task is `state` (queued: a retry
    or a recovery of it)."""
    Order.objects.filter(pk=order.pk).update(status="running", step=order.step + 1)
    order.refresh_from_db()
    return Task.objects.create(
        cluster_id=order.chain.cluster_id, job=order.chain.nodes.get(state=order.state).job,
        scheduled_for=order.created_at, trigger="order", state=state, order=order,
        order_step=order.step, order_state=order.state)


def steps_of(order):
    return list(Task.objects.filter(order=order).order_by("id")
                .values_list("order_state", "attempt", "state"))


# ------------------------------------------------------------------ chaingraph


def test_chaingraph_refuses_unsound_graphs_naming_the_node():
    assert chaingraph.check_chain_graph([]) == [
        "A job chain needs at least one node with a job and one end node."]
    problems = chaingraph.check_chain_graph([
        {"state": "a", "job": 1, "next_state": "b", "error_state": "nowhere"},
        {"state": "b", "job": None, "next_state": "", "error_state": ""},
    ])
    assert problems == ["Node 'a': error state 'nowhere' is not a state of this chain."]
    loop = chaingraph.check_chain_graph([
        {"state": "a", "job": 1, "next_state": "b", "error_state": "b"},
        {"state": "b", "job": 1, "next_state": "a", "error_state": "a"},
        {"state": "end", "job": None, "next_state": "", "error_state": ""},
    ])
    assert "Node 'a' cannot reach an end node." in loop


def test_chaingraph_orders_nodes_and_says_what_happens_at_each():
    nodes = [
        {"state": "done", "job": None, "next_state": "", "error_state": ""},
        {"state": "b", "job": 1, "next_state": "done", "error_state": "err"},
        {"state": "a", "job": 1, "next_state": "b", "error_state": "err"},
        {"state": "err", "job": None, "next_state": "", "error_state": ""},
    ]
    assert chaingraph.graph_order(nodes) == ["a", "b", "done", "err"]
    assert chaingraph.first_state(nodes) == "a"
    assert chaingraph.step_at({"state": "a", "job": 1, "action": "active"}) == "run"
    assert chaingraph.step_at({"state": "a", "job": 1, "action": "skipped"}) == "skip"
    assert chaingraph.step_at({"state": "a", "job": 1, "action": "stopped"}) == "wait"
    assert chaingraph.step_at({"state": "a", "job": 1, "action": "active"}, "a") == "end"
    assert chaingraph.step_at({"state": "done", "job": None, "action": "active"}) == "end"


# ------------------------------------------------------------------ the model API


def test_add_validates_and_refuses_a_taken_id(cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "o1", parameters={"x": 1}, actor=OP)
    assert (order.state, order.status, order.initial_state) == ("a", "waiting", "a")
    with pytest.raises(ValidationError, match="already has an order 'o1'"):
        Order.add(chain, "o1", actor=OP)
    with pytest.raises(ValidationError, match="'nope' is not a state of chain etl"):
        Order.add(chain, "o2", initial_state="nope", actor=OP)
    with pytest.raises(ValidationError):
        Order.add(chain, "o3", parameters=[1, 2], actor=OP)
    assert Order.objects.count() == 1
    event = Event.objects.get(kind="order.add")
    assert (event.actor, event.source, event.data["order_id"]) == ("otto", "console", "o1")


def test_add_to_an_unsound_chain_is_refused_with_the_reason(cluster):
    chain = make_chain(cluster)
    ChainNode.objects.filter(chain=chain, state="b").update(next_state="gone")
    with pytest.raises(ValidationError, match="Node 'b': next state 'gone' is not a state"):
        Order.add(chain, "o1", actor=OP)


def test_operator_actions_change_once_and_refuse_the_impossible(cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "o1", actor=OP)
    assert order.suspend(OP) is True and order.status == "suspended"
    assert order.suspend(OP) is False
    assert order.move("c", OP) is True and (order.state, order.status) == ("c", "suspended")
    with pytest.raises(ValidationError, match="'zz' is not a state of job chain etl"):
        order.move("zz", OP)
    assert order.resume(OP) is True and order.status == "waiting"
    assert order.resume(OP) is False
    assert order.reset(OP) is True and order.state == "a"
    assert order.reset(OP) is False
    start_a_step(order)
    with pytest.raises(ValidationError, match="running a step at a: it cannot be moved"):
        order.move("b", OP)
    with pytest.raises(ValidationError, match="cannot be reset"):
        order.reset(OP)
    with pytest.raises(ValidationError, match="cannot be removed"):
        order.remove(OP)
    assert order.suspend(OP) is True and order.suspend_requested
    assert order.resume(OP) is True and not order.suspend_requested
    Order.objects.filter(pk=order.pk).update(status="finished")
    with pytest.raises(ValidationError, match="nothing to suspend"):
        order.suspend(OP)
    assert order.remove(OP) is True
    assert not Order.objects.exists()
    kinds = list(Event.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == ["order.add", "order.suspend", "order.move", "order.resume", "order.reset",
                     "order.suspend", "order.resume", "order.remove"]


def test_chain_stop_and_node_actions(cluster):
    chain = make_chain(cluster)
    assert chain.stop(OP) is True and chain.stop(OP) is False
    assert chain.unstop(OP) is True
    node = chain.nodes.get(state="b")
    assert node.set_action("skipped", OP) is True and node.set_action("skipped", OP) is False
    with pytest.raises(ValidationError, match="'paused' is not a node action"):
        node.set_action("paused", OP)
    with pytest.raises(ValidationError, match="is an end node"):
        chain.nodes.get(state="done").set_action("stopped", OP)
    order = Order.add(chain, "o1", actor=OP)
    chain.stop(OP)
    assert order.waiting_reason() == "the job chain etl is stopped"
    chain.unstop(OP)
    chain.nodes.filter(state="a").update(action="stopped")
    assert order.waiting_reason() == "node a is stopped"


# ------------------------------------------------------------------ processing


def test_an_order_travels_its_chain_step_by_step(node, cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "o1", parameters={"shared": "order", "n": 7}, actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    order.refresh_from_db()
    assert order.state == "done" and not order.error_path
    assert steps_of(order) == [("a", 1, "succeeded"), ("b", 1, "succeeded"),
                               ("c", 1, "succeeded")]
    assert set(Task.objects.filter(order=order).values_list("trigger", flat=True)) == {"order"}
    # The order's parameters merged over the job's.
    assert SEEN[0] == {"from_job": "j", "shared": "order", "n": 7}
    kinds = list(Event.objects.filter(kind__startswith="order.").order_by("id")
                 .values_list("kind", flat=True))
    assert kinds == ["order.add", "order.moved", "order.moved", "order.finished"]


def test_a_failing_step_sends_the_order_along_its_error_state(node, cluster):
    chain = make_chain(cluster, steps=(("a", "ok"), ("b", "boom"), ("c", "ok")))
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "failed", message="failed")
    order.refresh_from_db()
    assert order.state == "error" and order.error_path
    assert steps_of(order) == [("a", 1, "succeeded"), ("b", 1, "failed")]
    failed = Event.objects.get(kind="order.failed")
    assert failed.data["from"] == "b" and failed.data["to"] == "error"


def test_a_failing_step_is_retried_before_the_order_moves(node, cluster):
    chain = make_chain(cluster, steps=(("a", "boom"),))
    job = chain.nodes.get(state="a").job
    job.max_retries, job.retry_backoff_seconds = 2, 0.0
    job.save()
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "failed", message="failed")
    assert steps_of(order) == [("a", 1, "failed"), ("a", 2, "failed"), ("a", 3, "failed")]
    assert set(Task.objects.filter(order=order).values_list("order_step", flat=True)) == {1}


def test_stopped_and_skipped_nodes(node, cluster):
    chain = make_chain(cluster)
    chain.nodes.get(state="b").set_action("skipped", OP)
    chain.nodes.get(state="c").set_action("stopped", OP)
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).state == "c", message="at c")
    for _ in range(5):
        node._orders_at = 0.0
        node.tick()
    order.refresh_from_db()
    assert (order.state, order.status) == ("c", "waiting")
    assert order.waiting_reason() == "node c is stopped"
    assert steps_of(order) == [("a", 1, "succeeded")]  # b was skipped: no task
    skipped = Event.objects.get(kind="order.moved", data__why="skipped")
    assert (skipped.data["from"], skipped.data["to"]) == ("b", "c")
    chain.nodes.get(state="c").set_action("active", OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    assert [s[0] for s in steps_of(order)] == ["a", "c"]


def test_a_stopped_chain_moves_no_order(node, cluster):
    chain = make_chain(cluster)
    chain.stop(OP)
    order = Order.add(chain, "o1", actor=OP)
    for _ in range(5):
        node._orders_at = 0.0
        node.tick()
    assert not Task.objects.filter(order=order).exists()
    chain.unstop(OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")


def test_suspend_while_a_step_runs_lets_it_finish_then_the_order_waits(node, cluster):
    chain = make_chain(cluster, steps=(("a", "hold"), ("b", "ok")))
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "running", message="running")
    order.refresh_from_db()
    assert order.suspend(OP) is True
    RELEASE.set()
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "suspended", message="suspended")
    order.refresh_from_db()
    assert order.state == "b" and not order.suspend_requested
    assert steps_of(order) == [("a", 1, "succeeded")]
    for _ in range(5):
        node._orders_at = 0.0
        node.tick()
    assert steps_of(order) == [("a", 1, "succeeded")]
    assert order.resume(OP) is True
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    assert steps_of(order) == [("a", 1, "succeeded"), ("b", 1, "succeeded")]


def test_a_cancelled_step_leaves_its_order_suspended_at_the_node(node, cluster):
    chain = make_chain(cluster, steps=(("a", "hold"),))
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Task.objects.filter(order=order, state="running").exists(),
          message="running")
    Task.objects.get(order=order).request_cancel("enough", OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "suspended", message="suspended")
    assert Order.objects.get(pk=order.pk).state == "a"


def test_cancelling_a_queued_retry_leaves_its_order_suspended_at_the_node(node, cluster):
    chain = make_chain(cluster, steps=(("a", "boom"), ("b", "ok")))
    chain.nodes.get(state="a").job.__class__.objects.update(max_retries=1,
                                                            retry_backoff_seconds=3600.0)
    order = Order.add(chain, "o1", actor=OP)
    drive(node, lambda: Task.objects.filter(order=order, state="queued").exists(),
          message="retry queued")
    assert Task.objects.get(order=order, state="queued").request_cancel("not needed", OP)
    order.refresh_from_db()  # at once, in the cancel's transaction
    assert (order.state, order.status, order.suspend_requested) == ("a", "suspended", False)
    moved = Event.objects.filter(kind="order.suspended").latest("id")
    assert (moved.data["to"], moved.data["why"]) == ("a", "was cancelled")
    assert order.move("b", OP) is True and order.resume(OP) is True
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    assert steps_of(order) == [("a", 1, "failed"), ("a", 2, "cancelled"), ("b", 1, "succeeded")]


def test_cancelling_a_queued_recovery_of_a_step_suspends_its_order(cluster):
    order = Order.add(make_chain(cluster), "o1", actor=OP)
    recovery = start_a_step(order, state="queued")
    Order.objects.filter(pk=order.pk).update(suspend_requested=True)
    assert recovery.request_cancel("no", OP)
    order.refresh_from_db()
    assert (order.state, order.status, order.suspend_requested) == ("a", "suspended", False)
    assert recovery.request_cancel("again", OP) is False  # already cancelled: nothing moves


def test_a_running_order_with_no_task_left_is_healed_by_an_operator(cluster):
    """Older data: an order `running` whose step has no queued or running task. No member
    will ever move it; the operator's actions are no longer refused."""
    chain = make_chain(cluster)
    orders = [Order.add(chain, f"o{i}", actor=OP) for i in range(5)]
    for order in orders:
        start_a_step(order, state="cancelled")
    o0, o1, o2, o3, o4 = orders
    assert o0.reset(OP) is True and (o0.state, o0.status) == ("a", "waiting")
    assert o1.move("b", OP) is True and (o1.state, o1.status) == ("b", "waiting")
    assert o2.remove(OP) is True and not Order.objects.filter(pk=o2.pk).exists()
    assert o3.suspend(OP) is True and (o3.status, o3.suspend_requested) == ("suspended", False)
    assert o4.resume(OP) is True and o4.status == "waiting"
    # Asked to suspend before it got stuck: a move leaves it suspended.
    start_a_step(o1, state="cancelled")
    Order.objects.filter(pk=o1.pk).update(suspend_requested=True)
    assert o1.move("c", OP) is True
    assert (o1.state, o1.status, o1.suspend_requested) == ("c", "suspended", False)
    # A step in flight (a queued retry) is still waited for.
    start_a_step(o0, state="queued")
    with pytest.raises(ValidationError, match="running a step at a: it cannot be reset"):
        o0.reset(OP)


def test_max_orders_bounds_orders_at_once_and_priority_goes_first(cluster):
    chain = make_chain(cluster, steps=(("a", "hold"),), max_orders=2)
    chain.nodes.get(state="a").job.__class__.objects.update(max_parallel=5)
    low = Order.add(chain, "low", priority=0, actor=OP)
    high = [Order.add(chain, f"high{i}", priority=5, actor=OP) for i in range(2)]
    n = make_node(workers=10)
    try:
        drive(n, lambda: Order.objects.filter(status="running").count() == 2, message="two")
        for _ in range(3):
            n._orders_at = 0.0
            n.tick()
        assert set(Order.objects.filter(status="running")) == set(high)
        assert Order.objects.get(pk=low.pk).waiting_reason() == \
            "the chain runs its limit of 2 order(s) at once"
        RELEASE.set()
        drive(n, lambda: Order.objects.filter(status="finished").count() == 3, message="all")
    finally:
        RELEASE.set()
        n.stopping = True
        n.shutdown()


def test_orders_blocked_by_their_jobs_max_parallel_are_claimed_at_the_heartbeat_rate(cluster):
    """Orders waiting for a slot of their job (max_parallel) are not fetched by the claim: they
    neither fill its batch nor make the node claim again at once (thousands of fenced claim
    transactions a second, each SQLite's write lock, were seen)."""
    from unittest import mock

    chain = make_chain(cluster, steps=(("a", "hold"),))
    job = chain.nodes.get(state="a").job
    assert job.max_parallel == 1
    for i in range(10):
        Order.add(chain, f"o{i}", actor=OP)
    n = make_node(workers=4)
    calls = []
    real = ledger.orders.claim_steps

    def counting(**kw):
        result = real(**kw)
        calls.append(result)
        return result

    try:
        drive(n, lambda: Task.objects.filter(state="running").exists(), message="one running")
        with mock.patch.object(ledger.orders, "claim_steps", counting):
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                n.tick()
        # FAST: a heartbeat every 0.2 s.
        assert len(calls) <= 8, f"{len(calls)} order claims in one second while blocked"
        assert not any(c.more or c.started for c in calls)
        assert Order.objects.filter(status="running").count() == 1
        RELEASE.set()
        drive(n, lambda: Order.objects.filter(status="finished").count() == 10, timeout=30,
              message="all finished")
    finally:
        RELEASE.set()
        n.stopping = True
        n.shutdown()


def test_without_a_due_order_the_order_claim_is_one_unlocked_read(cluster):
    """A cluster with only fires (or orders not due) pays one indexed read per heartbeat for
    the order claim: no fenced transaction (on SQLite the write lock of every member, every
    second). An order added (the NOTIFY, or the next heartbeat) is taken at once."""
    from unittest import mock

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    chain = make_chain(cluster)
    later = Order.add(chain, "later", interval_seconds=3600, actor=OP)  # due in an hour
    n = make_node()
    calls = []
    real = ledger.orders.claim_steps

    def counting(**kw):
        calls.append(1)
        return real(**kw)

    try:
        with mock.patch.object(ledger.orders, "claim_steps", counting):
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                n.tick()
            assert calls == []
            n._orders_at = 0.0
            with CaptureQueriesContext(connection) as queries:
                assert n.step_claim_orders() is False
            sqls = [q["sql"] for q in queries.captured_queries]
            assert len(sqls) == 1, sqls
            assert "FOR SHARE" not in sqls[0] and "SAVEPOINT" not in sqls[0]
            order = Order.add(chain, "now", actor=OP)
            n._orders_at = 0.0  # what a NOTIFY does
            n.tick()
            assert calls and Task.objects.filter(order=order).exists()
        assert Order.objects.get(pk=later.pk).status == "waiting"
    finally:
        n.stopping = True
        n.shutdown()


def test_a_claim_that_starts_nothing_does_not_ask_for_more(cluster):
    chain = make_chain(cluster, steps=(("a", "hold"),))
    for i in range(3):
        Order.add(chain, f"o{i}", actor=OP)
    me = Member.objects.create(cluster=cluster, name="me", mode="single", host="h", pid=1,
                               version="x", state="active")

    def claim(capacity):
        return ledger.orders.claim_steps(
            cluster_id=cluster.pk, member_id=me.pk, member_names=["me"], capacity=capacity,
            epoch=None, dead_after=60, sticky=False)

    first = claim(1)  # a full batch that started a step: there may be more
    assert len(first.started) == 1 and first.more
    blocked = claim(1)  # the job's only slot is taken: nothing fetched, nothing more
    assert not blocked.started and not blocked.more


def test_an_order_at_its_end_state_finishes_there(node, cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "o1", end_state="b", actor=OP)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    assert Order.objects.get(pk=order.pk).state == "b"
    assert steps_of(order) == [("a", 1, "succeeded")]


def test_a_step_lost_with_its_member_runs_again_once(node, cluster):
    chain = make_chain(cluster, steps=(("a", "ok"), ("b", "ok")))
    job = chain.nodes.get(state="a").job
    Task.objects.filter(job=job).delete()
    job.recover_lost = False  # a step runs again all the same: its order waits for it
    job.save()
    ghost = Member.objects.create(cluster=cluster, name="ghost", mode="single", host="h",
                                  pid=1, version="x", state="active")
    order = Order.add(chain, "o1", actor=OP)
    # The ghost takes the first step, then dies.
    result = ledger.orders.claim_steps(
        cluster_id=cluster.pk, member_id=ghost.pk, member_names=["ghost"], capacity=5,
        epoch=None, dead_after=60, sticky=False)
    assert len(result.started) == 1
    Member.objects.filter(pk=ghost.pk).update(state="dead")
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "finished", message="finished")
    assert steps_of(order) == [("a", 1, "lost"), ("a", 2, "succeeded"), ("b", 1, "succeeded")]


def test_orders_of_a_live_member_stay_with_it_unless_the_chain_is_distributed(cluster):
    chain = make_chain(cluster, steps=(("a", "ok"), ("b", "ok")))
    dist = make_chain(cluster, name="dist", steps=(("a", "ok"), ("b", "ok")), distributed=True)
    other = Member.objects.create(cluster=cluster, name="other", mode="active", host="h",
                                  pid=1, version="x", state="active")
    mine = Order.add(chain, "o1", actor=OP)
    shared = Order.add(dist, "o1", actor=OP)
    Order.objects.filter(pk__in=[mine.pk, shared.pk]).update(member=other, state="b")
    me = Member.objects.create(cluster=cluster, name="me", mode="active", host="h", pid=2,
                               version="x", state="active")
    result = ledger.orders.claim_steps(
        cluster_id=cluster.pk, member_id=me.pk, member_names=["me"], capacity=5, epoch=None,
        dead_after=60, sticky=True)
    assert [s.order_id for s in result.started] == [shared.pk]
    Member.objects.filter(pk=other.pk).update(state="dead")
    result = ledger.orders.claim_steps(
        cluster_id=cluster.pk, member_id=me.pk, member_names=["me"], capacity=5, epoch=None,
        dead_after=60, sticky=True)
    assert [s.order_id for s in result.started] == [mine.pk]


def test_a_retry_of_a_step_stays_with_the_live_member_holding_the_order(cluster):
    """Active cluster, a chain that is not distributed: the retry of a step (like its recovery)
    is the holder's while it is live; another member neither takes it (the order would then
    move to it for good) nor wakes for it in a loop. Once the holder is dead, any member."""
    chain = make_chain(cluster, steps=(("a", "boom"), ("b", "ok")))
    job = chain.nodes.get(state="a").job
    job.max_retries, job.retry_backoff_seconds = 1, 0.0
    job.save()
    holder = Member.objects.create(cluster=cluster, name="holder", mode="active", host="h",
                                   pid=1, version="x", state="active")
    order = Order.add(chain, "o1", actor=OP)
    s = ledger.orders.claim_steps(cluster_id=cluster.pk, member_id=holder.pk,
                                  member_names=["holder"], capacity=5, epoch=None,
                                  dead_after=60, sticky=True).started[0]
    ledger.record_finished(cluster.pk, holder.pk, [ledger.Finished(
        task_id=s.task_id, job=s.job, schedule_id=None, scheduled_for=s.scheduled_for,
        attempt=1, parameters={}, state="failed", exit_code=1, error="x", data=None,
        order_id=s.order_id, order_step=s.order_step, order_state=s.order_state)], [])
    retry = Task.objects.get(order=order, attempt=2)
    assert retry.state == "queued"
    other = make_node(name="other", mode="active")
    try:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            Member.objects.filter(pk=holder.pk).update(heartbeat_at=db_now())
            other.tick()
        assert Task.objects.get(pk=retry.pk).state == "queued"
        assert other.stats.claims <= 8, other.stats.claims  # FAST: a heartbeat every 0.2 s
        assert ledger.next_wake(cluster.pk, ["other"], other.member.pk) is None
        assert ledger.next_wake(cluster.pk, ["holder"], holder.pk) is not None
        Member.objects.filter(pk=holder.pk).update(state="dead")
        drive(other, lambda: Order.objects.get(pk=order.pk).status == "failed",
              message="the order taken by the other member")
    finally:
        other.stopping = True
        other.shutdown()
    assert Task.objects.get(pk=retry.pk).member_id == other.member.pk
    assert steps_of(order) == [("a", 1, "failed"), ("a", 2, "failed")]
    assert Order.objects.get(pk=order.pk).member_id == other.member.pk


def test_overlap_policy_replace_does_not_cancel_a_running_step_of_the_job(cluster):
    from datetime import timedelta

    from tests.conftest import add_interval

    chain = make_chain(cluster, steps=(("a", "hold"),))
    job = chain.nodes.get(state="a").job
    job.overlap_policy = "replace"
    job.save()
    me = Member.objects.create(cluster=cluster, name="me", mode="single", host="h", pid=1,
                               version="x", state="active")
    order = Order.add(chain, "o1", actor=OP)
    step = ledger.orders.claim_steps(cluster_id=cluster.pk, member_id=me.pk,
                                     member_names=["me"], capacity=5, epoch=None,
                                     dead_after=60, sticky=False).started[0]
    schedule = add_interval(job, seconds=60)
    schedule.__class__.objects.filter(pk=schedule.pk).update(
        next_fire_at=db_now() - timedelta(seconds=1))
    fired = ledger.claim(cluster_id=cluster.pk, member_id=me.pk, member_names=["me"],
                         capacity=5, epoch=None, dead_after=60, cache=ledger.TimingCache())
    assert fired.fired and not fired.started  # the job is busy: the fire waits (queued)
    assert Task.objects.filter(schedule=schedule, state="queued").exists()
    assert Task.objects.get(pk=step.task_id).cancel_reason == ""
    assert Order.objects.get(pk=order.pk).status == "running"


def test_a_fenced_member_claims_no_order_step(cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "o1", actor=OP)
    stale = Member.objects.create(cluster=cluster, name="stale", mode="passive", host="h",
                                  pid=1, version="x", state="active")
    cluster.lease_holder, cluster.lease_epoch = stale, 3
    cluster.save()
    result = ledger.orders.claim_steps(
        cluster_id=cluster.pk, member_id=stale.pk, member_names=["stale"], capacity=5,
        epoch=2, dead_after=60, sticky=False)
    assert result.fenced and not result.started
    order.refresh_from_db()
    assert (order.status, order.version) == ("waiting", 1)


def test_many_orders_each_step_once(cluster):
    chain = make_chain(cluster, steps=(("a", "ok"), ("b", "ok")), distributed=True)
    chain.nodes.get(state="a").job.__class__.objects.update(max_parallel=20)
    for i in range(60):
        Order.add(chain, f"o{i}", actor=OP)
    n1 = make_node(name="n1", mode="active", workers=8)
    n2 = make_node(name="n2", mode="active", workers=8)
    try:
        def done():
            n1.tick()
            n2.tick()
            return Order.objects.filter(status="finished").count() == 60
        drive(n1, done, timeout=60, message="all finished")
    finally:
        for n in (n1, n2):
            n.stopping = True
            n.shutdown()
    dup = (Task.objects.filter(attempt=1).values("order", "order_state")
           .annotate(n=Count("id")).filter(n__gt=1))
    assert not dup.exists()
    assert Task.objects.filter(order__isnull=False).count() == 120


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.skipif(not is_postgres(), reason="PostgreSQL's plans")
def test_the_order_claim_reads_its_batch_from_an_index_and_counts_chains_once(cluster):
    """The claim's candidates come in its order (priority, id) from index order_claim, across
    chains, so the scan stops after the batch (it read and sorted every waiting order of the
    database: 100 ms a claim with 25,000); the running orders of chains with a limit are
    counted once per claim, not once per candidate row."""
    from django.db import connection
    from django.utils import timezone

    from scheduler.models import Job

    chains = [make_chain(cluster, name=f"c{i}", steps=(("a", "ok"),), distributed=True,
                         max_orders=5 if i % 2 else None) for i in range(6)]
    Job.objects.update(max_parallel=100)
    Order.objects.bulk_create([
        Order(chain=chains[i % 6], order_id=f"o{i}", initial_state="a", state="a",
              status="running" if i % 4 == 0 else "waiting", priority=i % 3, parameters={})
        for i in range(3000)])
    sql = (ledger.orders.CLAIM_SQL.replace("{sticky}", "TRUE").replace("{lock_o}", "")
           .format(items="= ANY(%s)"))
    before = [cluster.pk] * (sql.split("= ANY(%s)")[0].count("%s") - 1) + [timezone.now()]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE scheduler_order")
        # A table this small could be read whole; with 25,000 waiting orders it cannot. Only an
        # index in the claim's order lets the plan do without a sort.
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, [*before, ["n1"], 10])
        plan = cursor.fetchone()[0]
    plan = plan if isinstance(plan, list) else __import__("json").loads(plan)
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "scheduler_order"
             and n.get("Alias") == "o"]
    assert [n.get("Index Name") for n in scans] == ["order_claim"], scans
    assert not [n for n in nodes if n["Node Type"] == "Sort"]
    assert scans[0]["Actual Rows"] <= 20
    counts = [n for n in nodes if n.get("Index Name") == "order_running"]
    assert counts and all(n["Actual Loops"] <= 3 for n in counts), counts  # 3 limited chains


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not is_postgres(), reason="row lock modes are PostgreSQL's")
def test_a_claims_job_lock_does_not_hold_back_a_commit_that_names_the_job(cluster):
    """A claim locks its jobs' rows so that members' claims take turns on them. A transaction
    that merely references one of those jobs (the record of an order's step writes an event
    naming the job) checks that key at its commit (Django's foreign keys are deferred) with
    FOR KEY SHARE. Under FOR UPDATE that check waited for the claim, and a record and a claim
    taking the jobs in different orders deadlocked: a second's stall of every member and a
    reconnect of the loser, seen in bench/orders.py with three members."""
    import psycopg
    from django.db import transaction

    jobs = [add_job(cluster, f"j{i}") for i in range(2)]
    with transaction.atomic():
        ledger._lock_jobs({j.pk for j in jobs})
        with psycopg.connect(database_url(), autocommit=True) as other:
            other.execute("SET lock_timeout = '1s'")
            # What the foreign key's trigger runs at the commit of the other transaction.
            for job in jobs:
                other.execute("SELECT 1 FROM ONLY scheduler_job x WHERE id = %s "
                              "FOR KEY SHARE OF x", [job.pk])
            # Two claims still take turns.
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SELECT 1 FROM scheduler_job WHERE id = %s FOR NO KEY UPDATE",
                              [jobs[0].pk])
