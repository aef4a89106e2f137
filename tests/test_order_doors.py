"""The doors of orders, chains and nodes (issue #14): scheduler/orderactions.py, the admin's
actions, the commands and the console's buttons and forms.

The happy paths call the model methods of the order processing (`Order.add/suspend/resume/
reset/move/remove`, `JobChain.stop/unstop`, `ChainNode.set_action`); the refusals are
decided before any of them is called, so they hold whatever the methods do.
"""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from scheduler import orderactions
from scheduler.eventlog import Actor
from scheduler.models import ChainNode, Event, Job, JobChain, Order
from tests.conftest import console_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(cluster):
    extract = Job.objects.create(cluster=cluster, name="extract", kind="shell", command="true")
    load = Job.objects.create(cluster=cluster, name="load", kind="shell", command="true")
    chain = JobChain.objects.create(cluster=cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="extract", job=extract, next_state="load",
                             error_state="failed", position=0)
    ChainNode.objects.create(chain=chain, state="load", job=load, next_state="done",
                             error_state="failed", position=1)
    ChainNode.objects.create(chain=chain, state="done", position=2)
    ChainNode.objects.create(chain=chain, state="failed", position=3)
    return chain


@pytest.fixture
def order(chain):
    return Order.objects.create(chain=chain, order_id="o1", initial_state="extract",
                                parameters={"day": "2026-03-01"})


def snapshot(chain):
    """What an operator action on the chain could change."""
    chain.refresh_from_db()
    return (chain.stopped,
            list(chain.nodes.order_by("pk").values_list("action", flat=True)),
            list(Order.objects.order_by("pk").values_list("order_id", "state", "status",
                                                          "priority", "version")),
            Event.objects.count())


def last_event(chain) -> Event:
    return Event.objects.filter(cluster_id=chain.cluster_id).order_by("-id").first()


def actor(reason="", source="console") -> Actor:
    return Actor(name="otto", source=source, reason=reason)


# ------------------------------------------------------------------ orderactions.perform


def test_perform_suspends_and_says_so_once(order):
    outcome = orderactions.perform("suspend", order, actor("maintenance"))
    assert outcome.changed and str(outcome) == "order etl/o1 suspended"
    order.refresh_from_db()
    assert order.status == Order.Status.SUSPENDED
    again = orderactions.perform("suspend", order, actor())
    assert not again.changed and again.message == "order etl/o1 was already suspended"
    event = last_event(order.chain)
    assert (event.actor, event.source, event.reason) == ("otto", "console", "maintenance")


def test_perform_moves_resets_and_removes(order):
    assert orderactions.perform("move", order, actor(), state="load").message == \
        "order etl/o1 moved to state load"
    order.refresh_from_db()
    assert order.state == "load"
    assert orderactions.perform("reset", order, actor()).message == \
        "order etl/o1 reset to its initial state extract"
    order.refresh_from_db()
    assert order.state == "extract"
    assert orderactions.perform("remove", order, actor()).changed
    assert not Order.objects.filter(pk=order.pk).exists()


def test_perform_stops_and_starts_a_chain_and_sets_a_node(chain):
    assert orderactions.perform("stop", chain, actor()).message == "chain etl stopped"
    chain.refresh_from_db()
    assert chain.stopped
    assert orderactions.perform("start", chain, actor()).message == "chain etl started"
    node = chain.nodes.get(state="load")
    assert orderactions.perform("skipped", node, actor()).message == \
        "node etl:load set to skipped"
    node.refresh_from_db()
    assert node.action == "skipped"


@pytest.mark.parametrize(("action", "target", "args", "message"), [
    ("fly", "order", {}, "“fly” is not an action on a order"),
    ("stop", "order", {}, "is not an action on a order"),
    ("suspend", "order", {"state": "load"}, "suspend takes no state"),
    ("move", "order", {}, "move needs a state"),
    ("move", "order", {"state": "nowhere"}, "'nowhere' is not a state of chain etl "
                                            "(states: extract, load, done, failed)"),
    ("move", "order", {"state": ["load"]}, "is not a state of chain etl"),
    ("suspend", "chain", {}, "is not an action on a chain"),
    ("paused", "node", {}, "is not an action on a node"),
])
def test_perform_refuses_bad_actions_and_arguments_before_anything_changes(
        order, action, target, args, message):
    chain = order.chain
    targets = {"order": order, "chain": chain, "node": chain.nodes.get(state="load")}
    before = snapshot(chain)
    with pytest.raises(ValidationError, match=re.escape(message)):
        orderactions.perform(action, targets[target], actor(), **args)
    assert snapshot(chain) == before


def test_a_new_order_is_checked_field_by_field(order):
    errors = orderactions.new_order_errors(order.chain, "o1", initial_state="nowhere",
                                           parameters=[1])
    assert "already has an order 'o1'" in " ".join(errors["order_id"])
    assert "'nowhere' is not a state of chain etl" in " ".join(errors["initial_state"])
    assert "parameters" in errors
    assert "title" in orderactions.new_order_errors(order.chain, "o2", title="x\x00")
    assert orderactions.new_order_errors(order.chain, "o2") == {}
    assert orderactions.new_order_errors(order.chain, "bad id!")["order_id"]


def test_add_order_records_who_added_it(chain):
    added = orderactions.add_order(chain, "o9", actor=actor("backfill"), title="Backfill",
                                   parameters={"day": "2026-03-02"}, priority=5)
    assert (added.state, added.priority, added.parameters) == ("extract", 5,
                                                               {"day": "2026-03-02"})
    assert last_event(chain).reason == "backfill"


# ------------------------------------------------------------------ admin


def staff(name: str, groups=()) -> User:
    user = User.objects.create_user(name, password="x", is_staff=True)
    user.groups.add(*Group.objects.filter(name__in=groups))
    return user


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:scheduler_{model._meta.model_name}_{view}", args=args)


def page_text(response) -> str:
    return response.content.decode()


def said(response) -> str:
    """The page's text as read (the admin capitalises its messages)."""
    return html.unescape(page_text(response)).lower()


@pytest.fixture
def operator_admin(client, db):
    client.force_login(staff("olga", ["operator"]))
    return client


@pytest.fixture
def viewer_admin(client, db):
    client.force_login(staff("vic", ["viewer"]))
    return client


@pytest.mark.parametrize(("action", "status"), [("suspend_orders", "suspended")])
def test_the_admin_suspends_an_order_from_the_list_and_names_the_user(operator_admin, order,
                                                                      action, status):
    response = operator_admin.post(admin_url(Order, "changelist"), {
        "action": action, "_selected_action": [order.pk]}, follow=True)
    assert "order etl/o1 suspended" in said(response)
    order.refresh_from_db()
    assert order.status == status
    event = last_event(order.chain)
    assert (event.actor, event.source) == ("olga", "admin")


def test_the_admin_resets_removes_and_moves_from_the_order_page(operator_admin, order):
    page = admin_url(Order, "change", order.pk)
    Order.objects.filter(pk=order.pk).update(state="load")
    response = operator_admin.post(page, {"CHANGE_FORM-action": "reset_orders",
                                          "_selected_action": order.pk}, follow=True)
    assert "order etl/o1 reset to its initial state extract" in said(response)
    # Move: a page asks for the state, listing the chain's states.
    response = operator_admin.post(page, {"CHANGE_FORM-action": "move_orders",
                                          "_selected_action": order.pk})
    html = page_text(response)
    assert response.status_code == 200
    assert [s for s in ("extract", "load", "done", "failed")
            if f'<option value="{s}">' in html] == ["extract", "load", "done", "failed"]
    response = operator_admin.post(page, {"CHANGE_FORM-action": "move_orders", "apply": "1",
                                          "state": "load", "_selected_action": order.pk},
                                   follow=True)
    assert "order etl/o1 moved to state load" in said(response)
    order.refresh_from_db()
    assert order.state == "load"
    response = operator_admin.post(page, {"CHANGE_FORM-action": "remove_orders",
                                          "_selected_action": order.pk}, follow=True)
    assert response.redirect_chain[-1][0] == admin_url(Order, "changelist")
    assert not Order.objects.filter(pk=order.pk).exists()


def test_the_admin_refuses_a_move_to_a_state_that_is_not_the_chains(operator_admin, order):
    before = snapshot(order.chain)
    response = operator_admin.post(admin_url(Order, "changelist"), {
        "action": "move_orders", "apply": "1", "state": "nowhere",
        "_selected_action": [order.pk]}, follow=True)
    assert "'nowhere' is not a state of chain etl" in said(response)
    assert "nothing was changed" in said(response)
    assert snapshot(order.chain) == before


def test_the_admin_moves_orders_of_one_chain_at_a_time(operator_admin, order, cluster):
    other = JobChain.objects.create(cluster=cluster, name="other")
    ChainNode.objects.create(chain=other, state="end")
    elsewhere = Order.objects.create(chain=other, order_id="o1", initial_state="end")
    response = operator_admin.post(admin_url(Order, "changelist"), {
        "action": "move_orders", "_selected_action": [order.pk, elsewhere.pk]}, follow=True)
    assert "orders of one chain at a time" in said(response)


def test_the_admin_stops_a_chain_and_skips_a_node(operator_admin, chain):
    response = operator_admin.post(admin_url(JobChain, "changelist"), {
        "action": "stop_chains", "_selected_action": [chain.pk]}, follow=True)
    assert "chain etl stopped" in said(response)
    chain.refresh_from_db()
    assert chain.stopped
    node = chain.nodes.get(state="load")
    response = operator_admin.post(admin_url(ChainNode, "changelist"), {
        "action": "set_skipped", "_selected_action": [node.pk]}, follow=True)
    assert "node etl:load set to skipped" in said(response)
    node.refresh_from_db()
    assert node.action == "skipped"
    assert last_event(chain).source == "admin"


@pytest.mark.parametrize(("model", "action"), [
    (Order, "suspend_orders"), (Order, "remove_orders"), (Order, "move_orders"),
    (JobChain, "stop_chains"), (ChainNode, "set_stopped")])
def test_the_admin_refuses_order_actions_to_a_viewer(viewer_admin, order, model, action):
    row = {Order: order, JobChain: order.chain,
           ChainNode: order.chain.nodes.get(state="load")}[model]
    page = viewer_admin.get(admin_url(model, "changelist"))
    assert page.status_code == 200
    form = page.context["action_form"]
    assert form is None or action not in dict(form.fields["action"].choices)
    before = snapshot(order.chain)
    response = viewer_admin.post(admin_url(model, "changelist"), {
        "action": action, "apply": "1", "state": "load", "_selected_action": [row.pk]},
        follow=True)
    assert "needs the permission scheduler.operate_job; nothing was changed" in \
        page_text(response)
    assert snapshot(order.chain) == before


def test_the_admin_order_page_shows_why_it_waits_its_steps_and_events(admin_client, order):
    orderactions.perform("suspend", order, Actor("otto", "cli", "night"))
    html = said(admin_client.get(admin_url(Order, "change", order.pk)))
    assert "why it waits" in html and "no step yet." in html
    assert "night" in html and "cli" in html


def test_a_node_action_is_not_edited_in_the_chain_form(admin_client, chain):
    html = page_text(admin_client.get(admin_url(JobChain, "change", chain.pk)))
    assert 'name="nodes-0-action"' not in html
    assert admin_url(ChainNode, "changelist") in html


def test_an_order_added_in_the_admin_is_recorded(admin_client, chain):
    response = admin_client.post(admin_url(Order, "add"), {
        "chain": chain.pk, "order_id": "o5", "title": "", "parameters": "{}", "priority": "0",
        "initial_state": "load", "end_state": ""})
    assert response.status_code == 302
    added = Order.objects.get(order_id="o5")
    assert added.state == "load"
    assert last_event(chain).source == "admin"


def test_an_order_edited_in_the_admin_is_versioned_and_audited(admin_client, order):
    Order.objects.filter(pk=order.pk).update(version=7)  # the nodes moved it meanwhile
    response = admin_client.post(admin_url(Order, "change", order.pk), {
        "order_id": "o1", "title": "Rerun", "parameters": '{"day": "2026-03-02"}',
        "priority": "5", "initial_state": "extract", "end_state": "", "repeat_kind": "",
        "cron": "", "timezone": "UTC", "interval_seconds": ""})
    assert response.status_code == 302, page_text(response)
    order.refresh_from_db()
    assert (order.title, order.priority, order.parameters, order.version) == (
        "Rerun", 5, {"day": "2026-03-02"}, 8)
    event = last_event(order.chain)
    assert (event.kind, event.actor, event.source) == ("order.changed", "admin", "admin")
    assert event.data["fields"] == ["title", "parameters", "priority"]
    assert "changed title, parameters, priority" in event.message
    assert Event.objects.filter(kind__in=Event.OPERATOR_KINDS, pk=event.pk).exists()


def test_the_admin_offers_no_plain_delete_of_an_order(admin_client, order):
    Order.objects.filter(pk=order.pk).update(status="running")
    page = admin_client.get(admin_url(Order, "changelist"))
    assert "delete_selected" not in dict(page.context["action_form"].fields["action"].choices)
    assert admin_client.get(admin_url(Order, "delete", order.pk)).status_code == 403
    assert admin_client.post(admin_url(Order, "delete", order.pk),
                             {"post": "yes"}).status_code == 403
    admin_client.post(admin_url(Order, "changelist"), {
        "action": "delete_selected", "post": "yes", "_selected_action": [order.pk]})
    assert Order.objects.filter(pk=order.pk).exists()


def test_a_chain_is_not_deleted_while_it_has_orders_not_done(admin_client, order):
    chain = order.chain
    Order.objects.filter(pk=order.pk).update(status="running")
    Order.objects.create(chain=chain, order_id="o2", initial_state="load", status="finished")
    page = said(admin_client.get(admin_url(JobChain, "delete", chain.pk)))
    assert "cannot delete job chain" in page
    assert "order etl/o1 (running a step at extract)" in page and "etl/o2" not in page
    response = admin_client.post(admin_url(JobChain, "delete", chain.pk), {"post": "yes"})
    assert "order etl/o1 (running a step at extract)" in said(response)
    response = admin_client.post(admin_url(JobChain, "changelist"), {
        "action": "delete_selected", "post": "yes", "_selected_action": [chain.pk]})
    assert "order etl/o1 (running a step at extract)" in said(response)
    assert Order.objects.count() == 2 and JobChain.objects.filter(pk=chain.pk).exists()
    # Once its orders are done, the chain goes, with its nodes and its orders.
    Order.objects.filter(pk=order.pk).update(status="failed")
    response = admin_client.post(admin_url(JobChain, "delete", chain.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not JobChain.objects.exists() and not ChainNode.objects.exists()
    assert not Order.objects.exists()


# ------------------------------------------------------------------ commands


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_commands_operate_orders_with_actor_and_reason(order):
    out = run("suspendorder", "--cluster", "test", "etl", "o1", "--actor", "carl",
              "--reason", "disk full")
    assert out.strip() == "order etl/o1 suspended"
    event = last_event(order.chain)
    assert (event.actor, event.source, event.reason) == ("carl", "cli", "disk full")
    assert "was already suspended" in run("suspendorder", "--cluster", "test", "etl", "o1")
    assert run("resumeorder", "--cluster", "test", "etl", "o1").strip() == \
        "order etl/o1 resumed"
    assert "moved to state load" in run("moveorder", "--cluster", "test", "etl", "o1", "load")
    assert "reset to its initial state extract" in run("resetorder", "--cluster", "test", "etl",
                                                       "o1")
    assert "removed" in run("removeorder", "--cluster", "test", "etl", "o1")
    assert not Order.objects.filter(pk=order.pk).exists()


def test_the_commands_stop_start_chains_and_set_nodes(chain):
    assert run("stopchain", "--cluster", "test", "etl").strip() == "chain etl stopped"
    assert run("startchain", "--cluster", "test", "etl").strip() == "chain etl started"
    assert run("nodeaction", "--cluster", "test", "etl", "load", "stopped").strip() == \
        "node etl:load set to stopped"
    assert chain.nodes.get(state="load").action == "stopped"


def test_addorder_adds_an_order(chain):
    out = run("addorder", "--cluster", "test", "etl", "o7", "--title", "Backfill",
              "--parameters", '{"day": "2026-03-02"}', "--priority", "3", "--state", "load",
              "--reason", "backfill")
    assert out.strip() == "order etl/o7 added to chain etl in cluster test at state load"
    added = Order.objects.get(order_id="o7")
    assert (added.title, added.parameters, added.priority) == (
        "Backfill", {"day": "2026-03-02"}, 3)
    assert last_event(chain).reason == "backfill"


@pytest.mark.parametrize(("args", "message"), [
    (("suspendorder", "--cluster", "nope", "etl", "o1"), "There is no cluster named 'nope'"),
    (("suspendorder", "--cluster", "test", "elt", "o1"), "No job chain named 'elt'"),
    (("suspendorder", "--cluster", "test", "etl", "o1", "o2"), "No order 'o2' in chain 'etl'"),
    (("moveorder", "--cluster", "test", "etl", "o1", "nowhere"),
     "order etl/o1: 'nowhere' is not a state of chain etl"),
    (("nodeaction", "--cluster", "test", "etl", "publish", "stopped"),
     "Chain 'etl' has no node at state 'publish'"),
    (("stopchain", "--cluster", "test", "etl", "elt"), "No job chain named 'elt'"),
    (("addorder", "--cluster", "test", "etl", "o2", "--parameters", "{bad"), "--parameters:"),
    (("addorder", "--cluster", "test", "etl", "o2", "--parameters", "[1]"), "--parameters:"),
    (("addorder", "--cluster", "test", "etl", "o1"), "already has an order 'o1'"),
    (("addorder", "--cluster", "test", "etl", "o2", "--state", "nowhere"),
     "--state: 'nowhere' is not a state of chain etl"),
    (("addorder", "--cluster", "test", "etl", "bad id"), "ORDER_ID:"),
    (("suspendorder", "--cluster", "test", "etl", "o1", "--reason", "x" * 501),
     "--reason: at most 500 characters"),
    (("suspendorder", "--cluster", "test", "etl", "o1", "--reason", "a\x00b"), "NUL"),
    (("orders", "--cluster", "test", "--chain", "elt"), "No job chain named 'elt'"),
    (("order", "--cluster", "test", "etl", "o2"), "No order 'o2'"),
])
def test_bad_command_input_is_one_line_and_changes_nothing(order, args, message):
    before = snapshot(order.chain)
    with pytest.raises(CommandError, match=re.escape(message)):
        run(*args)
    assert snapshot(order.chain) == before


def test_a_bad_command_exits_non_zero_with_one_line(order, capsys):
    from django.core.management import ManagementUtility

    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "moveorder", "--cluster", "test", "etl", "o1",
                           "nowhere"]).execute()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nowhere' is not a state of chain etl" in err[0]


def test_the_order_commands_list_and_show_orders(order):
    Order.objects.create(chain=order.chain, order_id="o2", initial_state="extract",
                         status="finished", state="done")
    listing = run("orders", "--cluster", "test")
    assert "o1" in listing and "o2" in listing and "why it waits" in listing
    only = run("orders", "--cluster", "test", "--chain", "etl", "--status", "finished")
    assert "o2" in only and " o1 " not in only
    shown = run("order", "--cluster", "test", "etl", "o1")
    assert "order etl/o1" in shown and '"day": "2026-03-01"' in shown
    assert "no step yet" in shown


# ------------------------------------------------------------------ console


def order_page(order) -> str:
    return reverse("console:order", args=[order.pk])


def post_order(client, order, action, **data):
    return client.post(reverse("console:order_action", args=[order.pk]),
                       {"action": action, **data})


def messages_of(client, url) -> str:
    return page_text(client.get(url))


def test_the_console_suspends_an_order_with_the_reason(operator_client, order):
    response = post_order(operator_client, order, "suspend", reason="waiting for the vendor")
    assert response.status_code == 302 and response["Location"] == order_page(order)
    order.refresh_from_db()
    assert order.status == "suspended"
    event = last_event(order.chain)
    assert (event.actor, event.source, event.reason) == ("otto", "console",
                                                         "waiting for the vendor")
    html = messages_of(operator_client, order_page(order))
    assert "Order etl/o1 suspended." in html and "waiting for the vendor" in html


def test_the_console_moves_resets_and_removes_an_order(operator_client, order):
    post_order(operator_client, order, "move", state="load")
    order.refresh_from_db()
    assert order.state == "load"
    post_order(operator_client, order, "reset")
    order.refresh_from_db()
    assert order.state == "extract"
    response = post_order(operator_client, order, "remove", reason="duplicate")
    assert response["Location"] == reverse("console:chain", args=[order.chain_id])
    assert not Order.objects.filter(pk=order.pk).exists()


def test_the_console_stops_a_chain_and_sets_a_node(operator_client, chain):
    response = operator_client.post(reverse("console:chain_action", args=[chain.pk]),
                                    {"action": "stop", "reason": "release"})
    assert response["Location"] == reverse("console:chain", args=[chain.pk])
    chain.refresh_from_db()
    assert chain.stopped and last_event(chain).reason == "release"
    node = chain.nodes.get(state="load")
    operator_client.post(reverse("console:node_action", args=[chain.pk, node.pk]),
                         {"action": "skipped"})
    node.refresh_from_db()
    assert node.action == "skipped"


def test_the_console_adds_an_order(operator_client, chain):
    response = operator_client.post(reverse("console:add_order", args=[chain.pk]), {
        "add-order_id": "o8", "add-title": "Rerun", "add-parameters": '{"day": "x"}',
        "add-priority": "2", "add-initial_state": "load", "add-reason": "rerun"})
    added = Order.objects.get(order_id="o8")
    assert response["Location"] == order_page(added)
    assert (added.state, added.priority, added.parameters) == ("load", 2, {"day": "x"})
    assert last_event(chain).source == "console"


@pytest.mark.parametrize(("action", "data", "message"), [
    ("fly", {}, "“fly” is not an action here"),
    ("", {}, "Choose an action."),
    ("move", {}, "move needs a state"),
    ("move", {"state": "nowhere"}, "'nowhere' is not a state of chain etl"),
    ("move", {"state": "a\x00"}, "Null characters are not allowed"),
    ("suspend", {"reason": "x" * 501}, "at most 500 characters"),
])
def test_the_console_refuses_bad_order_actions_and_changes_nothing(operator_client, order,
                                                                   action, data, message):
    before = snapshot(order.chain)
    response = post_order(operator_client, order, action, **data)
    assert response.status_code == 302
    html = messages_of(operator_client, order_page(order))
    assert message in html.replace("&#x27;", "'").replace("&quot;", '"')
    assert "Nothing was changed" in html
    assert snapshot(order.chain) == before


def test_unknown_ids_are_404_and_change_nothing(operator_client, order):
    chain = order.chain
    other = JobChain.objects.create(cluster=chain.cluster, name="other")
    stranger = ChainNode.objects.create(chain=other, state="end")
    before = snapshot(chain)
    for address, data in (
        (reverse("console:order_action", args=[4242]), {"action": "suspend"}),
        (reverse("console:chain_action", args=[4242]), {"action": "stop"}),
        (reverse("console:node_action", args=[chain.pk, 4242]), {"action": "stopped"}),
        # A node of another chain is not a node of this one.
        (reverse("console:node_action", args=[chain.pk, stranger.pk]), {"action": "stopped"}),
        (reverse("console:add_order", args=[4242]), {"add-order_id": "o3"}),
    ):
        assert operator_client.post(address, data).status_code == 404
    assert snapshot(chain) == before


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"add-order_id": ""}, "order_id", "This field is required."),
    ({"add-order_id": "o1"}, "order_id", "Chain etl already has an order 'o1'."),
    ({"add-order_id": "bad id"}, "order_id", "is not a valid name"),
    ({"add-order_id": "o2", "add-parameters": "{bad"}, "parameters", ""),
    ({"add-order_id": "o2", "add-parameters": "[1, 2]"}, "parameters", ""),
    ({"add-order_id": "o2", "add-priority": "x"}, "priority", "Enter a whole number."),
    ({"add-order_id": "o2", "add-priority": str(2**40)}, "priority", "less than or equal"),
    ({"add-order_id": "o2", "add-initial_state": "nowhere"}, "initial_state",
     "is not a state of chain etl"),
    ({"add-order_id": "o2", "add-title": "a\x00b"}, "title", "Null characters"),
])
def test_the_add_order_form_shows_each_error_by_its_field(operator_client, order, data, field,
                                                          message):
    before = snapshot(order.chain)
    response = operator_client.post(reverse("console:add_order", args=[order.chain_id]), data)
    assert response.status_code == 400
    form = response.context["add_form"]
    assert field in form.errors and message in " ".join(form.errors[field])
    assert f'id="id_add-{field}_error"' in page_text(response)
    assert snapshot(order.chain) == before


def test_a_viewer_sees_the_buttons_disabled_with_the_reason_and_a_forged_post_is_403(
        viewer_client, order):
    chain = order.chain
    html = page_text(viewer_client.get(order_page(order)))
    buttons = re.findall(r'<button type="submit" name="action" value="(\w+)" disabled '
                         r'title="Operating needs the operator role', html)
    assert sorted(buttons) == ["move", "remove", "reset", "resume", "suspend"]
    html = page_text(viewer_client.get(reverse("console:chain", args=[chain.pk])))
    assert 'value="stop" data-explain' in html and "disabled" in html
    assert "<fieldset disabled" in html
    before = snapshot(chain)
    node = chain.nodes.get(state="load")
    for address, data in (
        (reverse("console:order_action", args=[order.pk]), {"action": "remove"}),
        (reverse("console:chain_action", args=[chain.pk]), {"action": "stop"}),
        (reverse("console:node_action", args=[chain.pk, node.pk]), {"action": "stopped"}),
        (reverse("console:add_order", args=[chain.pk]), {"add-order_id": "o3"}),
    ):
        assert viewer_client.post(address, data).status_code == 403
    assert snapshot(chain) == before


def test_the_actions_are_post_only(operator_client, order):
    assert operator_client.get(reverse("console:order_action", args=[order.pk])).status_code \
        == 405
    assert operator_client.get(reverse("console:chain_action",
                                       args=[order.chain_id])).status_code == 405


def test_csrf_is_enforced_on_the_order_actions(order):
    client = Client(enforce_csrf_checks=True)
    client.force_login(console_user("olga", "operator"))
    before = snapshot(order.chain)
    assert post_order(client, order, "suspend").status_code == 403
    assert client.post(reverse("console:add_order", args=[order.chain_id]),
                       {"add-order_id": "o3"}).status_code == 403
    assert snapshot(order.chain) == before
    html = page_text(client.get(order_page(order)))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    assert post_order(client, order, "suspend", csrfmiddlewaretoken=token).status_code == 302
    order.refresh_from_db()
    assert order.status == "suspended"


def test_the_order_page_keeps_its_dom_and_shows_the_step_history_and_the_move_states(
        operator_client, order):
    html = page_text(operator_client.get(order_page(order)))
    assert 'id="order-status"' in html and 'id="order-why"' in html
    assert 'id="order-steps"' in html and "No step yet." in html
    assert re.findall(r'<option value="(\w+)"', html) == ["extract", "load", "done", "failed"]
    assert '<option value="extract" selected>' in html
    assert 'id="confirm-dialog"' in html and "console/orders.js" in html


def test_the_chain_page_offers_the_node_actions_and_the_add_form(operator_client, chain):
    html = page_text(operator_client.get(reverse("console:chain", args=[chain.pk])))
    node = chain.nodes.get(state="load")
    assert reverse("console:node_action", args=[chain.pk, node.pk]) in html
    assert f'id="node-{node.pk}" data-action="active"' in html
    assert 'name="add-order_id"' in html
    assert '<option value="" selected>the first node (extract)</option>' in html
