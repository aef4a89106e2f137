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

    def render_job(topic_id, viewer):
        CALLS.append((topic_id, viewer))
        job = Job.objects.get(pk=topic_id)
        return (f'<span id="t-{job.pk}" hx-swap-oob="true" data-operate="{viewer.may_operate}">'
                f"{job.title}</span>")

    def render_boom(topic_id, viewer):
        raise RuntimeError("this renderer is broken")

    monkeypatch.setitem(live.RENDERERS, "testtopic", render_job)
    monkeypatch.setitem(live.RENDERERS, "boomtopic", render_boom)
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
