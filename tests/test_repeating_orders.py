"""Repeating orders (JobScheduler's permanent orders with a run time): an order with its own
schedule starts at its next due time, goes back to its initial state at the end of each run
and waits until its next due time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from scheduler import ledger, timing
from scheduler.clock import db_now
from scheduler.ledger import orders as ledger_orders
from scheduler.models import Event, Member, Order, Task
from tests.test_node import drive, make_node
from tests.test_orders import OP, RELEASE, make_chain, steps_of

BERLIN = "Europe/Berlin"


@pytest.fixture
def node(cluster):
    n = make_node()
    yield n
    RELEASE.set()
    n.stopping = True
    n.shutdown()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def due_row(kind="cron", cron="", zone="UTC", seconds=None, anchor=None):
    """A row as ledger.orders.next_due reads it (REPEAT_SQL's columns)."""
    return (1, kind, cron, zone, seconds, anchor, "a")


def make_due(order, ago: float = 1.0) -> None:
    """The order's next due time has come (edited in SQL, on the database's clock)."""
    Order.objects.filter(pk=order.pk).update(next_start_at=db_now() - timedelta(seconds=ago))


# ------------------------------------------------------------------ the due-time maths


def test_due_times_across_the_spring_forward_in_berlin():
    row = due_row(cron="30 2 * * *", zone=BERLIN)
    # 2026-03-29: 02:30 does not exist in Berlin; the run is due at the end of the gap.
    after_28th = ledger_orders.next_due(row, utc(2026, 3, 28, 1, 30))  # 02:30 CET
    assert after_28th == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert ledger_orders.next_due(row, after_28th) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    # The same as timing.py's schedule maths (no maths of its own).
    t = timing.Timing(kind="cron", cron="30 2 * * *", timezone=BERLIN)
    assert timing.next_fire(t, utc(2026, 3, 28, 1, 30)) == after_28th


def test_due_times_across_the_fall_back_in_berlin():
    row = due_row(cron="30 2 * * *", zone=BERLIN)
    # 2026-10-25: 02:30 happens twice; the run is due once, at the first.
    first = ledger_orders.next_due(row, utc(2026, 10, 24, 0, 30))
    assert first == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert ledger_orders.next_due(row, first) == utc(2026, 10, 26, 1, 30)  # 02:30 CET


def test_interval_due_times_are_fixed_seconds_whatever_the_clock_change():
    anchor = utc(2026, 3, 29, 0, 15)  # 01:15 CET, before the change
    row = due_row(kind="interval", seconds=3600, anchor=anchor)
    # A run that ended at 03:20 CEST (01:20Z): the next is 2 h after the anchor in real time,
    # 04:15 CEST on the wall (3 h of wall time: the clock jumped an hour).
    due = ledger_orders.next_due(row, utc(2026, 3, 29, 1, 20))
    assert due == utc(2026, 3, 29, 2, 15)
    assert f"{due.astimezone(timing.validate_timezone(BERLIN)):%H:%M %Z}" == "04:15 CEST"


def test_the_reason_names_the_due_time_in_the_orders_zone(cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "nightly", cron="30 2 * * *", timezone=BERLIN, actor=OP)
    Order.objects.filter(pk=order.pk).update(next_start_at=utc(2126, 7, 1, 1, 0))
    order.refresh_from_db()
    assert order.waiting_reason() == "waiting until 2126-07-01 03:00:00 CEST"
    chain.stop(OP)
    order.refresh_from_db()
    assert order.waiting_reason() == ("waiting until 2126-07-01 03:00:00 CEST; then: the job "
                                      "chain etl is stopped")


# ------------------------------------------------------------------ adding


def test_a_repeating_order_starts_at_its_next_due_time_not_at_once(cluster):
    chain = make_chain(cluster)
    before = db_now()
    order = Order.add(chain, "hourly", interval_seconds=3600, actor=OP)
    assert order.repeat_kind == "interval"
    assert order.repeat_anchor_at >= before
    assert order.next_start_at == order.repeat_anchor_at + timedelta(hours=1)
    cron = Order.add(chain, "daily", cron="0 2 * * *", timezone=BERLIN, actor=OP)
    assert cron.next_start_at == timing.next_fire(cron.repeat_timing(), cron.repeat_anchor_at)
    added = Event.objects.get(kind="order.add", data__order=cron.pk)
    assert "repeating (cron '0 2 * * *' Europe/Berlin), first run at" in added.message
    plain = Order.add(chain, "once", actor=OP)
    assert (plain.repeat_kind, plain.next_start_at) == ("", None)


@pytest.mark.parametrize(("repeat", "field", "message"), [
    ({"cron": "61 * * * *"}, "cron", "Invalid cron expression"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone", "Unknown time zone"),
    ({"interval_seconds": 0}, "interval_seconds", "greater than or equal to 1"),
    ({"cron": "0 2 * * *", "interval_seconds": 60}, "interval_seconds", "not both"),
])
def test_a_bad_schedule_is_refused_by_field_and_adds_nothing(cluster, repeat, field, message):
    chain = make_chain(cluster)
    with pytest.raises(ValidationError) as caught:
        Order.add(chain, "r", actor=OP, **repeat)
    assert message in " ".join(caught.value.message_dict[field])
    assert not Order.objects.exists()


def test_the_claim_skips_orders_not_yet_due(cluster):
    chain = make_chain(cluster)
    member = Member.objects.create(cluster=cluster, name="m1", mode="single", host="h",
                                   pid=1, version="x", state="active")
    later = Order.add(chain, "later", interval_seconds=3600, priority=9, actor=OP)
    now_ = Order.add(make_chain(cluster, name="other"), "now", actor=OP)

    def claim():
        return ledger_orders.claim_steps(
            cluster_id=cluster.pk, member_id=member.pk, member_names=["m1"], capacity=10,
            epoch=None, dead_after=60, sticky=False)

    assert claim().started[0].order_id == now_.pk
    assert Order.objects.get(pk=later.pk).status == "waiting"
    assert not Task.objects.filter(order=later).exists()
    make_due(later)
    assert [s.order_id for s in claim().started] == [later.pk]


# ------------------------------------------------------------------ running


def test_at_the_end_a_repeating_order_goes_back_and_waits_for_its_next_due_time(node, cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "hourly", interval_seconds=3600, actor=OP)
    anchor = order.repeat_anchor_at
    for _ in range(3):
        node._orders_at = 0.0
        node.tick()
    assert not Task.objects.filter(order=order).exists()  # not due yet
    make_due(order)
    drive(node, lambda: Order.objects.get(pk=order.pk).runs == 1, message="one run")
    order.refresh_from_db()
    now = db_now()
    assert (order.state, order.status, order.error_path) == ("a", "waiting", False)
    assert now < order.next_start_at <= now + timedelta(hours=1)
    assert (order.next_start_at - anchor) % timedelta(hours=1) == timedelta(0)  # no drift
    assert order.waiting_reason(now=now).startswith("waiting until ")
    assert steps_of(order) == [("a", 1, "succeeded"), ("b", 1, "succeeded"),
                               ("c", 1, "succeeded")]
    run = Event.objects.get(kind="order.finished", data__order=order.pk)
    assert run.data["run"] == "finished" and run.data["end"] == "done"
    assert (run.data["to"], run.data["status"]) == ("a", "waiting")
    assert "repeats: waiting at a until" in run.message
    for _ in range(3):
        node._orders_at = 0.0
        node.tick()
    assert Task.objects.filter(order=order).count() == 3  # waits for its next due time
    # The next run: each step a new one (the order's step numbers go on).
    make_due(order)
    drive(node, lambda: Order.objects.get(pk=order.pk).runs == 2, message="two runs")
    steps = list(Task.objects.filter(order=order).values_list("order_step", flat=True))
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert Event.objects.filter(kind="order.finished", data__order=order.pk).count() == 2


def test_a_failed_run_is_recorded_and_the_order_repeats_anyway(node, cluster):
    chain = make_chain(cluster, steps=(("a", "ok"), ("b", "boom")))
    order = Order.add(chain, "r", cron="0 3 * * *", timezone=BERLIN, actor=OP)
    make_due(order)
    drive(node, lambda: Order.objects.get(pk=order.pk).runs == 1, message="one run")
    order.refresh_from_db()
    assert (order.state, order.status, order.error_path) == ("a", "waiting", False)
    assert order.next_start_at == timing.next_fire(order.repeat_timing(), order.updated_at)
    failed = Event.objects.get(kind="order.failed", data__order=order.pk)
    assert (failed.data["run"], failed.data["end"]) == ("failed", "error")


def test_missed_runs_are_one_run_at_once_then_the_next_regular_time(node, cluster):
    chain = make_chain(cluster, steps=(("a", "ok"),))
    order = Order.add(chain, "r", interval_seconds=60, actor=OP)
    make_due(order, ago=600)  # ten runs missed while the cluster was down
    drive(node, lambda: Order.objects.get(pk=order.pk).runs == 1, message="one run")
    for _ in range(3):
        node._orders_at = 0.0
        node.tick()
    order.refresh_from_db()
    assert order.runs == 1 and Task.objects.filter(order=order).count() == 1
    assert db_now() < order.next_start_at <= db_now() + timedelta(seconds=60)


def test_an_order_at_its_end_node_when_claimed_repeats_too(cluster):
    chain = make_chain(cluster)
    member = Member.objects.create(cluster=cluster, name="m1", mode="single", host="h",
                                   pid=1, version="x", state="active")
    order = Order.add(chain, "r", interval_seconds=60, actor=OP)
    Order.objects.filter(pk=order.pk).update(state="done")  # e.g. moved there by an operator
    make_due(order)
    result = ledger_orders.claim_steps(
        cluster_id=cluster.pk, member_id=member.pk, member_names=["m1"], capacity=10,
        epoch=None, dead_after=60, sticky=False)
    assert result.moved == 1 and not result.started
    order.refresh_from_db()
    assert (order.state, order.status, order.runs) == ("a", "waiting", 1)
    assert order.next_start_at > db_now()


def test_suspend_during_the_last_step_leaves_it_suspended_at_its_initial_state(node, cluster):
    chain = make_chain(cluster, steps=(("a", "hold"),))
    order = Order.add(chain, "r", interval_seconds=3600, actor=OP)
    make_due(order)
    drive(node, lambda: Order.objects.get(pk=order.pk).status == "running", message="running")
    order.refresh_from_db()
    assert order.suspend(OP) is True
    RELEASE.set()
    drive(node, lambda: Order.objects.get(pk=order.pk).runs == 1, message="one run")
    order.refresh_from_db()
    assert (order.state, order.status, order.suspend_requested) == ("a", "suspended", False)
    assert order.resume(OP) is True
    order.refresh_from_db()
    assert order.waiting_reason().startswith("waiting until ")


def test_the_node_sleeps_until_the_next_due_time(node, cluster):
    chain = make_chain(cluster)
    order = Order.add(chain, "r", interval_seconds=3600, actor=OP)
    soon = db_now() + timedelta(seconds=0.3)
    Order.objects.filter(pk=order.pk).update(next_start_at=soon)
    assert ledger_orders.next_start(cluster.pk, db_now()) == soon
    node._orders_at = 0.0
    node.step_claim_orders()
    assert node._orders_at - time.monotonic() < 0.4
    drive(node, lambda: Task.objects.filter(order=order).exists(), message="the first step")
    assert ledger.orders is ledger_orders


# ------------------------------------------------------------------ doors


def test_addorder_takes_a_cron_with_a_zone_or_an_interval(cluster):
    make_chain(cluster)
    out = StringIO()
    call_command("addorder", "--cluster", cluster.name, "etl", "nightly", "--cron",
                 "30 2 * * *", "--timezone", BERLIN, stdout=out)
    assert "it repeats (cron '30 2 * * *' Europe/Berlin): first run at" in out.getvalue()
    call_command("addorder", "--cluster", cluster.name, "etl", "often", "--interval", "90",
                 stdout=StringIO())
    assert Order.objects.get(order_id="often").interval_seconds == 90
    with pytest.raises(CommandError, match="--cron: Invalid cron expression"):
        call_command("addorder", "--cluster", cluster.name, "etl", "bad", "--cron", "x")
    with pytest.raises(CommandError, match="--timezone: Unknown time zone"):
        call_command("addorder", "--cluster", cluster.name, "etl", "bad", "--cron",
                     "0 2 * * *", "--timezone", "Nowhere/Land")
    with pytest.raises(CommandError, match="--interval: Ensure this value is greater"):
        call_command("addorder", "--cluster", cluster.name, "etl", "bad", "--interval", "0")
    assert not Order.objects.filter(order_id="bad").exists()


def test_the_console_form_adds_a_repeating_order_or_says_which_field_is_wrong(
        operator_client, cluster):
    chain = make_chain(cluster)
    url = reverse("console:add_order", args=[chain.pk])
    bad = operator_client.post(url, {"add-order_id": "r", "add-cron": "0 2 * *",
                                     "add-timezone": "Europe/Nowhere"})
    assert bad.status_code == 400
    form = bad.context["add_form"]
    assert "expected 5 fields" in " ".join(form.errors["cron"])
    assert "Unknown time zone" in " ".join(form.errors["timezone"])
    assert not Order.objects.exists()
    ok = operator_client.post(url, {"add-order_id": "r", "add-cron": "0 2 * * *",
                                    "add-timezone": BERLIN})
    assert ok.status_code == 302
    order = Order.objects.get(order_id="r")
    assert (order.repeat_kind, order.timezone) == ("cron", BERLIN)
    page = operator_client.get(reverse("console:order", args=[order.pk])).content.decode()
    assert "waiting until" in page and "cron &#x27;0 2 * * *&#x27; Europe/Berlin" in page


def test_the_admin_adds_a_repeating_order_and_refuses_a_mismatch(client, cluster,
                                                                  django_user_model):
    chain = make_chain(cluster)
    admin_user = django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(admin_user)
    url = reverse("admin:scheduler_order_add")
    base = {"chain": chain.pk, "order_id": "r", "title": "", "parameters": "{}",
            "priority": 0, "initial_state": "a", "end_state": "", "timezone": "UTC"}
    response = client.post(url, {**base, "repeat_kind": "", "cron": "0 2 * * *"})
    assert response.status_code == 200
    assert "only for an order that repeats by cron" in response.content.decode()
    response = client.post(url, {**base, "repeat_kind": "interval", "interval_seconds": ""})
    assert "needs an interval" in response.content.decode()
    assert not Order.objects.exists()
    response = client.post(url, {**base, "repeat_kind": "interval", "interval_seconds": "120"})
    assert response.status_code == 302
    order = Order.objects.get(order_id="r")
    assert order.next_start_at == order.repeat_anchor_at + timedelta(seconds=120)
    assert Event.objects.filter(kind="order.add", actor="root").exists()
