"""The console's chains and orders pages, as they exist (nothing moves orders yet)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scheduler import orderactions
from scheduler.models import ChainNode, Event, Job, JobChain, Order

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(cluster):
    first = Job.objects.create(cluster=cluster, name="extract", kind="shell", command="true")
    second = Job.objects.create(cluster=cluster, name="load", kind="shell", command="true")
    chain = JobChain.objects.create(cluster=cluster, name="etl", title="Nightly <ETL>")
    # Positions out of graph order: the page shows the graph order.
    ChainNode.objects.create(chain=chain, state="done", position=9)
    ChainNode.objects.create(chain=chain, state="failed", position=8)
    ChainNode.objects.create(chain=chain, state="load", job=second, next_state="done",
                             error_state="failed", position=5, action="stopped")
    ChainNode.objects.create(chain=chain, state="extract", job=first, next_state="load",
                             error_state="failed", position=1)
    return chain


def order(chain, order_id, state, **kw):
    return Order.objects.create(chain=chain, order_id=order_id, initial_state="extract",
                                state=state, **kw)


def test_the_list_counts_nodes_and_orders_by_status(viewer_client, chain):
    order(chain, "o1", "extract")
    order(chain, "o2", "load")
    order(chain, "o3", "done", status="finished")
    JobChain.objects.create(cluster=chain.cluster, name="empty", stopped=True)
    response = viewer_client.get(reverse("console:chains"))
    assert response.status_code == 200
    rows = {c.name: c for c in response.context["chains"]}
    assert rows["etl"].node_count == 4
    assert dict(rows["etl"].order_counts)["waiting at a node"] == 2
    assert dict(rows["etl"].order_counts)["finished"] == 1
    assert rows["empty"].node_count == 0
    html = response.content.decode()
    assert f'id="chain-{rows["empty"].pk}" data-stopped="true"' in html
    assert "Nightly &lt;ETL&gt;" in html


def test_the_chain_shows_nodes_in_graph_order_and_why_orders_wait(viewer_client, chain):
    waiting = order(chain, "o1", "extract")
    at_stopped = order(chain, "o2", "load")
    done = order(chain, "o3", "done", status="finished")
    response = viewer_client.get(reverse("console:chain", args=[chain.pk]))
    assert [n.state for n in response.context["nodes"]] == ["extract", "load", "done", "failed"]
    why = {o.pk: o.why for o in response.context["orders"]}
    assert why[waiting.pk] == "waiting for a member with free capacity to take its step"
    assert why[at_stopped.pk] == "node load is stopped"
    assert why[done.pk] == "finished"
    html = response.content.decode()
    assert '<th scope="row">extract</th>' in html
    assert f'href="/jobs/{chain.nodes.get(state="extract").job_id}/"' in html
    JobChain.objects.filter(pk=chain.pk).update(stopped=True)
    response = viewer_client.get(reverse("console:chain", args=[chain.pk]))
    assert {o.pk: o.why for o in response.context["orders"]}[waiting.pk] == (
        f"the job chain {chain.name} is stopped")


def test_the_add_form_names_the_state_a_new_order_really_starts_at(operator_client, chain):
    """All positions 0: the first node by position (done) is not where Order.add starts an
    order (the first in graph order, extract); every door says the one it uses."""
    ChainNode.objects.filter(chain=chain).update(position=0)
    page = reverse("console:chain", args=[chain.pk])
    response = operator_client.get(page)
    assert [n.state for n in response.context["nodes"]] == ["extract", "load", "done", "failed"]
    choices = list(response.context["add_form"].fields["initial_state"].choices)
    assert choices[0] == ("", "the first node (extract)")
    assert [value for value, _ in choices[1:]] == ["extract", "load", "done", "failed"]
    assert orderactions.new_order_errors(chain, "o9") == {}
    response = operator_client.post(reverse("console:add_order", args=[chain.pk]),
                                     {"add-order_id": "o9", "add-timezone": "UTC"})
    assert response.status_code == 302
    assert Order.objects.get(order_id="o9").state == "extract"


def test_the_order_page_shows_parameters_and_its_events(viewer_client, chain, cluster):
    o = order(chain, "o1", "extract", parameters={"day": "2026-03-01", "note": "<b>x</b>"})
    Event.objects.create(cluster=cluster, kind=Event.Kind.ORDER_RETURNED, actor="node-b",
                         message="order o1 of dead member node-a goes back to node extract",
                         data={"order": o.pk, "state": "extract", "was_running": True})
    Event.objects.create(cluster=cluster, kind=Event.Kind.ORDER_RETURNED, actor="node-b",
                         message="another order", data={"order": o.pk + 1000})
    response = viewer_client.get(reverse("console:order", args=[o.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "goes back to node extract" in html and "another order" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "waiting for a member with free capacity to take its step" in html
    assert "No step yet." in html  # the step history (scheduler/orderactions.order_steps)


def test_unknown_chains_and_orders_are_404(viewer_client):
    assert viewer_client.get("/chains/4242/").status_code == 404
    assert viewer_client.get("/orders/4242/").status_code == 404


def test_nobody_gets_403(nobody_client, chain):
    o = order(chain, "o1", "extract")
    for url in ("/chains/", f"/chains/{chain.pk}/", f"/orders/{o.pk}/"):
        assert nobody_client.get(url).status_code == 403


def test_an_empty_chain_and_an_order_at_an_unknown_state_render(viewer_client, cluster):
    chain = JobChain.objects.create(cluster=cluster, name="bare")
    o = Order.objects.create(chain=chain, order_id="lost", initial_state="gone", state="gone")
    assert viewer_client.get(f"/chains/{chain.pk}/").status_code == 200
    page = viewer_client.get(f"/orders/{o.pk}/").content.decode()
    assert "is not a node of the chain" in page
