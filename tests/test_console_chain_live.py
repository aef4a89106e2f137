"""The chain and order pages follow their topics: what the renderers push replaces elements
of the page by id, and never carries a form (a push has no request, so no CSRF token)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from scheduler.console import live
from scheduler.console.views import chains as chain_views
from scheduler.eventlog import Actor
from scheduler.models import ChainNode, Job, JobChain, Order, Task

pytestmark = pytest.mark.django_db

OP = Actor("otto", source="console")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class TopLevel(HTMLParser):
    """The top-level elements of a fragment: (tag, attributes)."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.found.append((tag, dict(attrs)))
        if tag not in VOID:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag not in VOID:
            self.depth -= 1


def top_level(html: str) -> list[tuple[str, dict]]:
    parser = TopLevel()
    parser.feed(html)
    assert parser.depth == 0, "the fragment's tags are balanced"
    return parser.found


def check_push(html: str, page: str) -> list[str]:
    """Every top-level element of the push has an id and hx-swap-oob, that id is on the page,
    and nothing in the push is a form. Returns the ids."""
    assert html
    assert "<form" not in html and "csrfmiddlewaretoken" not in html
    ids = []
    for tag, attrs in top_level(html):
        assert attrs.get("hx-swap-oob") == "true", (tag, attrs)
        assert attrs.get("id"), (tag, attrs)
        assert f'id="{attrs["id"]}"' in page, attrs["id"]
        ids.append(attrs["id"])
    return ids


@pytest.fixture
def chain(cluster):
    first = Job.objects.create(cluster=cluster, name="extract", kind="shell", command="true")
    second = Job.objects.create(cluster=cluster, name="load", kind="shell", command="true")
    chain = JobChain.objects.create(cluster=cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="extract", job=first, next_state="load",
                             error_state="failed", position=1)
    ChainNode.objects.create(chain=chain, state="load", job=second, next_state="done",
                             error_state="failed", position=2)
    ChainNode.objects.create(chain=chain, state="done", position=8)
    ChainNode.objects.create(chain=chain, state="failed", position=9)
    return chain


def test_the_renderers_are_registered():
    assert live.RENDERERS["chain"].render is chain_views.render_chain
    assert live.RENDERERS["order"].render is chain_views.render_order
    assert live.RENDERERS["order"].takes_id and "scheduler_task" in live.RENDERERS["order"].tables
    assert live.parse_topics("chain:3,order:4") == [("chain", 3), ("order", 4)]


@pytest.mark.parametrize("operator", [False, True])
def test_the_chain_push_replaces_elements_of_the_chain_page(operator, operator_client, chain):
    Order.add(chain, "o1", actor=OP)
    Order.add(chain, "nightly", cron="0 2 * * *", timezone="Europe/Berlin", actor=OP)
    page = operator_client.get(reverse("console:chain", args=[chain.pk])).content.decode()
    assert f'ws-connect="/ws/live/?topics=chain:{chain.pk}"' in page
    assert "<title>Chain etl · opscenter</title>" in page
    assert page.count('id="add-order"') == 1
    html = chain_views.render_chain(chain.pk, [live.Viewer(operator, False)])[0]
    ids = check_push(html, page)
    nodes = list(chain.nodes.all())
    assert set(ids) == {"chain-state", "chain-orders", *(f"node-{n.pk}-action" for n in nodes),
                        *(f"node-{n.pk}-orders" for n in nodes)}
    assert "waiting until" in html and "repeats: cron" in html


def test_the_chain_push_follows_orders_and_nodes(chain):
    order = Order.add(chain, "o1", actor=OP)
    viewer = live.Viewer(False, False)
    before = chain_views.render_chain(chain.pk, [viewer])[0]
    extract = chain.nodes.get(state="extract")
    assert f'<span id="node-{extract.pk}-orders" data-live hx-swap-oob="true">1</span>' in before
    order.suspend(OP)
    extract.set_action("stopped", OP)
    chain.stop(OP)
    after = chain_views.render_chain(chain.pk, [viewer])[0]
    assert after != before
    assert "suspended by an operator" in after
    assert f'<span id="node-{extract.pk}-orders" data-live hx-swap-oob="true">0</span>' in after
    assert "badge state-stopped" in after.split('id="node-')[0]  # the chain's own badge


def test_the_order_push_replaces_elements_of_the_order_page(operator_client, chain):
    order = Order.add(chain, "o1", actor=OP)
    url = reverse("console:order", args=[order.pk])
    page = operator_client.get(url).content.decode()
    assert f'ws-connect="/ws/live/?topics=order:{order.pk}"' in page
    viewer = live.Viewer(True, False)
    html = chain_views.render_order(order.pk, [viewer])[0]
    assert check_push(html, page) == ["order-status", "order-facts", "order-steps",
                                      "order-events"]
    assert 'id="order-why"' in html and "No step yet." in html
    # A step starts: the push shows it, and the order running.
    Task.objects.create(cluster=chain.cluster, job=chain.nodes.get(state="extract").job,
                        scheduled_for=order.created_at, trigger="order", state="running",
                        order=order, order_step=1, order_state="extract")
    Order.objects.filter(pk=order.pk).update(status="running", step=1)
    html = chain_views.render_order(order.pk, [viewer])[0]
    assert "running the step of node extract" in html
    assert 'data-task-state="running"' in html
    check_push(html, operator_client.get(url).content.decode())


def test_one_render_gives_each_tier_its_fragment(chain):
    Order.add(chain, "o1", actor=OP)
    viewers = [live.Viewer(False, False), live.Viewer(True, True)]
    for render, topic_id in ((chain_views.render_chain, chain.pk),
                             (chain_views.render_order, Order.objects.get().pk)):
        fragments = render(topic_id, viewers)
        assert len(fragments) == 2 and all(fragments)


def test_unknown_or_removed_targets_push_nothing(chain):
    viewer = live.Viewer(False, False)
    order = Order.add(chain, "o1", actor=OP)
    order.remove(OP)
    assert chain_views.render_order(order.pk, [viewer])[0] == ""
    assert chain_views.render_order(None, [viewer])[0] == ""
    assert chain_views.render_chain(999999, [viewer])[0] == ""
    assert chain_views.render_chain(None, [viewer])[0] == ""
