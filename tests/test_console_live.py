"""The live socket and the relay: who may follow, the snapshot on connect, and changes made by
other processes reaching the socket, coalesced, rendered once per tier, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from opscenter.asgi import application
from scheduler.console import consumers, live, relay
from tests.conftest import ROOT, add_job, client_for, console_user, database_url

# Renders happen in the relay's thread on its own connection, and other processes write: the
# data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

CALLS: list = []


@pytest.fixture
def topics(monkeypatch):
    """A test topic showing a job's title, and one whose renderer always raises."""
    from scheduler.models import Job

    def render_job(topic_id, viewers):
        CALLS.append((topic_id, tuple(viewers)))
        job = Job.objects.get(pk=topic_id)
        return [f'<span id="t-{job.pk}" hx-swap-oob="true" data-operate="{viewer.may_operate}">'
                f"{job.title}</span>" for viewer in viewers]

    def render_boom(topic_id, viewers):
        raise RuntimeError("this renderer is broken")

    def render_events(topic_id, viewers):
        CALLS.append(("events", tuple(viewers)))
        from scheduler.models import Event

        return [f'<span id="events" hx-swap-oob="true">{Event.objects.count()}</span>'] * len(
            viewers)

    monkeypatch.setitem(live.RENDERERS, "testtopic",
                        live.Kind(render_job, takes_id=True, tables=("scheduler_job",)))
    monkeypatch.setitem(live.RENDERERS, "boomtopic",
                        live.Kind(render_boom, takes_id=True, tables=("scheduler_job",)))
    monkeypatch.setitem(live.RENDERERS, "eventtopic",
                        live.Kind(render_events, takes_id=False, tables=("scheduler_event",)))
    monkeypatch.setattr(relay, "LINGER", 0.0)
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.fixture
def job(cluster):
    return add_job(cluster, "shown", title="t0")


def session_cookie(user) -> str:
    return client_for(user).cookies["sessionid"].value


def socket(path: str, cookie: str | None = None, origin: str = "http://localhost"):
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


def run(scenario):
    """Run an async scenario on one event loop (the relay lives on it), then stop the relay
    so that its database connections are closed."""

    async def wrapped():
        await get_channel_layer().flush()
        try:
            return await scenario()
        finally:
            await relay.stop_relay()

    return async_to_sync(wrapped)()


async def receive(comm, until, timeout: float = 10.0) -> list[str]:
    """Messages (keepalives left out) until one satisfies `until`; fails at the deadline."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"nothing matched within {timeout} s; got {seen}")
        try:
            message = await comm.receive_from(timeout=left)
        except TimeoutError:
            raise AssertionError(f"nothing matched within {timeout} s; got {seen}") from None
        if message == consumers.KEEPALIVE_MESSAGE:
            continue
        seen.append(message)
        if until(message):
            return seen


def other_process(code: str) -> None:
    """Run Django code in another process against the test database."""
    import os

    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_an_anonymous_socket_is_refused_with_4403(topics, job):
    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}")
        connected, _ = await comm.connect()
        assert connected
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close",
                                                        "code": consumers.REFUSED}
        await comm.wait()

    run(scenario)


def test_a_user_without_the_view_permission_is_refused(topics, job):
    cookie = session_cookie(console_user("nemo", None))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        assert (await comm.receive_output(timeout=5))["code"] == consumers.REFUSED

    run(scenario)


def test_a_foreign_origin_is_refused(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie,
                      origin="http://evil.example")
        connected, _ = await comm.connect()
        assert not connected

    run(scenario)


def test_connect_sends_a_fresh_snapshot_of_the_valid_topics_only(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk},nosuchkind:1,testtopic:x,"
                      f"testtopic:{job.pk}", cookie)
        connected, _ = await comm.connect()
        assert connected
        snapshot = await comm.receive_from(timeout=5)
        assert snapshot == (f'<span id="t-{job.pk}" hx-swap-oob="true" '
                            'data-operate="False">t0</span>')
        assert list(relay.get_relay().follows) == [("testtopic", job.pk, "o0s0")]
        await comm.disconnect()

    run(scenario)


def test_an_operator_gets_the_operators_render(topics, job):
    cookie = session_cookie(console_user("otto", "operator"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        assert 'data-operate="True"' in await comm.receive_from(timeout=5)
        await comm.disconnect()

    run(scenario)


def test_a_change_by_another_process_reaches_the_socket(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        await asyncio.to_thread(other_process, "from scheduler.models import Job; "
                                f"Job.objects.filter(pk={job.pk}).update(title='changed')")
        await receive(comm, lambda m: ">changed<" in m, 5)
        await comm.disconnect()

    run(scenario)


def test_a_burst_of_100_changes_is_a_handful_of_pushes(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        await asyncio.to_thread(other_process, "from scheduler.models import Job\n"
                                "for i in range(100):\n"
                                f"    Job.objects.filter(pk={job.pk}).update(title=f'n{{i}}')")
        pushes = await receive(comm, lambda m: ">n99<" in m, 10)
        assert len(pushes) <= 15, pushes
        await comm.disconnect()

    run(scenario)


def test_two_sockets_of_one_tier_cost_one_render_per_fan_out(topics, job):
    cookies = [session_cookie(console_user(name, "viewer")) for name in ("vera", "vic")]

    async def scenario():
        socks = [socket(f"/ws/live/?topics=testtopic:{job.pk}", c) for c in cookies]
        for comm in socks:
            await comm.connect()
            await receive(comm, lambda m: ">t0<" in m, 5)
        the_relay = relay.get_relay()
        fanouts, renders = the_relay.fanouts, len(CALLS)
        await asyncio.to_thread(other_process, "from scheduler.models import Job; "
                                f"Job.objects.filter(pk={job.pk}).update(title='both')")
        for comm in socks:
            await receive(comm, lambda m: ">both<" in m, 5)
        assert the_relay.fanouts > fanouts
        assert len(CALLS) - renders == the_relay.fanouts - fanouts
        for comm in socks:
            await comm.disconnect()

    run(scenario)


def test_a_renderer_that_raises_does_not_stop_the_others(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=boomtopic:1,testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        await asyncio.to_thread(other_process, "from scheduler.models import Job; "
                                f"Job.objects.filter(pk={job.pk}).update(title='still')")
        await receive(comm, lambda m: ">still<" in m, 5)
        assert not relay.get_relay().task.done()
        await comm.disconnect()

    run(scenario)


def test_a_silent_socket_gets_keepalives(topics, job, monkeypatch):
    monkeypatch.setattr(consumers, "KEEPALIVE", 0.2)
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        assert await comm.receive_from(timeout=5) == consumers.KEEPALIVE_MESSAGE
        await comm.disconnect()

    run(scenario)


def test_the_relay_stops_following_when_the_last_socket_leaves(topics, job):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        the_relay = relay.get_relay()
        await comm.disconnect()
        await asyncio.wait_for(the_relay.task, 5)
        assert the_relay.closing and relay.get_relay() is not the_relay

    run(scenario)


def test_the_follower_sees_a_commit_of_another_connection(job):
    """PostgreSQL: the statement triggers notify `opscenter_console` with the table's name;
    SQLite: `data_version` moves. Either way the first wait returns nothing, then the change."""
    from scheduler import db
    from scheduler.models import Job

    follower = db.follower([db.CONSOLE_CHANNEL], name="test follower")
    try:
        assert follower.wait(0.05) == []  # connects; nothing yet
        Job.objects.filter(pk=job.pk).update(title="seen")
        notes = follower.wait(5.0)
        expected = ("opscenter_console", "scheduler_job") if db.is_pg() else db.CHANGED
        assert notes == [expected]
        assert follower.wait(0.05) == []
    finally:
        follower.close()


def test_the_follower_reconnects_after_its_connection_is_lost(job):
    from scheduler import db
    from scheduler.models import Job

    follower = db.follower([db.CONSOLE_CHANNEL], name="test follower")
    try:
        follower.wait(0.05)
        follower.conn.close()  # as if the database had gone away
        deadline = time.monotonic() + 10
        notes: list = []
        while not notes and time.monotonic() < deadline:
            notes = follower.wait(0.2)
        assert notes == [db.RECONNECTED]
        Job.objects.filter(pk=job.pk).update(title="after")
        assert follower.wait(5.0) != []
    finally:
        follower.close()


# ------------------------------------------------------------------ topics, tiers, routing


def test_topics_are_validated_by_kind(topics):
    assert live.parse_topics("testtopic:3,eventtopic") == [("testtopic", 3), ("eventtopic", None)]
    # a kind that takes an id needs one; a kind that takes none is not multiplied by ids
    assert live.parse_topics("testtopic,eventtopic:1,eventtopic:2") == []
    assert live.parse_topics(",".join(f"dashboard:{i}" for i in range(20))) == []
    assert live.parse_topics("cluster,dashboard") == [("dashboard", None)]
    assert live.parse_topics("jobs,jobs:3") == [("jobs", None), ("jobs", 3)]


@pytest.mark.parametrize("query", ["", "topics=", "topics=nosuch:1", "topics=cluster",
                                   "topics=dashboard:0,dashboard:1"])
def test_a_socket_with_no_valid_topic_is_closed_4400(topics, job, query):
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?{query}", cookie)
        connected, _ = await comm.connect()
        assert connected
        closed = await comm.receive_output(timeout=5)
        assert closed["type"] == "websocket.close" and closed["code"] == consumers.BAD_TOPICS
        assert closed["reason"]
        assert relay.get_relay().task is None  # no relay started for it

    run(scenario)


def test_a_socket_past_the_relays_cap_is_closed_4429(topics, job, monkeypatch):
    monkeypatch.setattr(relay, "MAX_KEYS", 2)
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        first = socket(f"/ws/live/?topics=testtopic:{job.pk},eventtopic", cookie)
        await first.connect()
        await receive(first, lambda m: ">t0<" in m, 5)
        same = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)  # no new key: fine
        await same.connect()
        await receive(same, lambda m: ">t0<" in m, 5)
        more = socket(f"/ws/live/?topics=testtopic:{job.pk + 1}", cookie)
        await more.connect()
        assert (await more.receive_output(timeout=5))["code"] == consumers.TOO_MANY
        assert len(relay.get_relay().follows) == 2
        await first.disconnect()
        await same.disconnect()

    run(scenario)


def test_one_render_per_topic_for_all_its_tiers(topics, job):
    async def scenario():
        the_relay = relay.Relay(asyncio.get_running_loop())  # its loop not started: no race
        keys = [("testtopic", job.pk, "o0s0"), ("testtopic", job.pk, "o1s0")]
        try:
            rendered = await the_relay._render(keys)
        finally:
            await the_relay._close()
        assert len(CALLS) == 1 and len(CALLS[0][1]) == 2  # one call, both tiers
        assert 'data-operate="False">t0<' in rendered[keys[0]]
        assert 'data-operate="True">t0<' in rendered[keys[1]]

    run(scenario)


def following(*keys):
    """A relay whose loop is not started, following these keys (each already sent once)."""
    loop = asyncio.new_event_loop()
    loop.close()  # only stored: its loop never runs
    the_relay = relay.Relay(loop)
    for key in keys:
        the_relay.follows[key] += 1
        the_relay.sent[key] = b"x"
    return the_relay


def test_a_kinds_min_interval_spaces_its_renders(topics, monkeypatch):
    kind = live.RENDERERS["testtopic"]
    monkeypatch.setitem(live.RENDERERS, "testtopic",
                        live.Kind(kind.render, True, kind.tables, min_interval=60.0))
    slow, fast = ("testtopic", 1, "o0s0"), ("eventtopic", None, "o0s0")
    the_relay = following(slow, fast)
    assert sorted(map(str, the_relay.due(full=True))) == sorted(map(str, [slow, fast]))
    for _ in range(3):
        assert the_relay.due(full=True) == [fast]  # held back: 60 s after its last render
    assert the_relay.pending == {("testtopic", 1)}
    assert the_relay._next_pending() - time.monotonic() > 55
    the_relay.rendered_at[("testtopic", 1)] -= 61
    assert the_relay.due(full=False) == [slow]  # rendered as soon as it may, even unwoken
    assert the_relay.pending == set()


def test_the_dashboard_declares_2_s_between_renders():
    import scheduler.console.urls  # noqa: F401  (registers the pages' renderers)

    assert live.RENDERERS["dashboard"].min_interval >= 2.0
    for name, kind in live.RENDERERS.items():
        assert kind.tables and all(t.startswith("scheduler_") for t in kind.tables), name


def test_a_notification_renders_only_the_topics_of_its_table(topics):
    """PostgreSQL names the table written; a fan-out then renders only the kinds that show
    it. A note without a table (SQLite's data_version, a reconnect) renders every topic."""
    job_key, events_key = ("testtopic", 1, "o0s0"), ("eventtopic", None, "o1s0")
    the_relay = following(job_key, events_key)
    assert the_relay.due(full=False) == []  # nothing written, nothing new
    the_relay._note([("opscenter_console", "scheduler_event")])
    assert the_relay.due(full=False) == [events_key]
    the_relay._note([("opscenter_console", "scheduler_job"),
                     ("opscenter_console", "scheduler_tasklog")])
    assert the_relay.due(full=False) == [job_key]
    the_relay._note([("opscenter_console", "scheduler_tasklog")])  # nobody shows it
    assert the_relay.due(full=False) == []
    the_relay._note([("", "changed")])
    assert len(the_relay.due(full=False)) == 2
    assert len(the_relay.due(full=True)) == 2  # the periodic refresh: all
    the_relay.force.add(job_key)  # a socket got no snapshot of it
    assert the_relay.due(full=False) == [job_key]


def test_a_stalled_relay_sends_no_keepalive(topics, job, monkeypatch):
    monkeypatch.setattr(consumers, "KEEPALIVE", 0.2)
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=testtopic:{job.pk}", cookie)
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 5)
        assert await comm.receive_from(timeout=5) == consumers.KEEPALIVE_MESSAGE
        the_relay = relay.get_relay()
        monkeypatch.setattr(relay, "STALLED_AFTER", 0.5)
        monkeypatch.setattr(relay, "PERIOD", 3600.0)  # no fan-out comes to revive it
        the_relay.healthy_at = time.monotonic() - 10
        await asyncio.sleep(0.3)
        while not await comm.receive_nothing(timeout=0.1):
            await comm.receive_from()  # drain what was already on its way
        assert await comm.receive_nothing(timeout=1.0)  # silence: the page's banner shows
        await the_relay.fan_out(full=True)  # it completes a fan-out: alive again
        assert await comm.receive_from(timeout=5) == consumers.KEEPALIVE_MESSAGE
        await comm.disconnect()

    run(scenario)


def test_a_hung_render_query_is_cut_by_a_statement_timeout(topics, job, monkeypatch):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a statement timeout is PostgreSQL's")
    monkeypatch.setattr(relay, "RENDER_TIMEOUT", 0.3)

    def render_hang(topic_id, viewers):
        from django.db import connection as conn

        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(30)")
        return [""] * len(viewers)

    monkeypatch.setitem(live.RENDERERS, "hangtopic",
                        live.Kind(render_hang, takes_id=True, tables=("scheduler_job",)))
    cookie = session_cookie(console_user("vera", "viewer"))

    async def scenario():
        comm = socket(f"/ws/live/?topics=hangtopic:1,testtopic:{job.pk}", cookie)
        started = time.monotonic()
        await comm.connect()
        await receive(comm, lambda m: ">t0<" in m, 10)
        assert time.monotonic() - started < 5  # not 30 s
        assert "hangtopic:1" in relay.get_relay().errors
        await comm.disconnect()

    run(scenario)


def test_no_renderer_pushes_a_form(job):
    """A fragment is rendered without a request: a form in it would have no CSRF token, and
    swapped into a page it would replace a working form with one that gets 403. Every kind
    the pages register, for every tier, with the data its page shows."""
    import re

    import scheduler.console.urls  # noqa: F401  (registers the pages' renderers)
    from scheduler.models import Member, Schedule, Task

    cluster = job.cluster
    cluster.mode = "passive"
    cluster.save()
    member = Member.objects.create(cluster=cluster, name="m1", mode="passive", host="h",
                                   pid=1, version="1", state="standby")
    Schedule.objects.create(job=job, kind="interval", interval_seconds=60)
    task = Task.objects.create(cluster=cluster, job=job, member=member, state="running",
                               trigger="manual", scheduled_for=job.created_at)
    ids = {"cluster": cluster.pk, "jobs": cluster.pk, "job": job.pk, "task": task.pk,
           "dashboard": None}
    assert set(ids) <= set(live.RENDERERS)
    viewers = [live.Viewer.of_tier(t) for t in ("o0s0", "o1s0", "o1s1")]
    for kind, topic_id in [*ids.items(), ("jobs", None)]:
        for html in live.RENDERERS[kind].render(topic_id, viewers):
            assert html and 'hx-swap-oob="' in html, kind
            assert not re.search(r"<form\b", html, re.I), (kind, html)
            assert "csrfmiddlewaretoken" not in html, kind
