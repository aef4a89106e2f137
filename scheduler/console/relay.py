"""The live relay: one per console process, between the database and the process's sockets.

It runs as an asyncio task on the server's event loop, started by the first socket that
follows a topic, and ends when the last one has gone (after a short linger, so that a page
reload does not reconnect to the database). Blocking work runs on two threads of its own:
- the follower (scheduler/db.py) waits for other processes' commits: LISTEN on
  `opscenter_console` on PostgreSQL (statement triggers on the console's tables send it,
  migration 0011), `PRAGMA data_version` on SQLite;
- the renderer runs the topics' renderers with the ORM (one Django connection).

When woken it waits a short debounce (a burst of commits becomes one fan-out), then renders
each topic that a socket of this process follows ONCE (one call of its renderer for all the
tiers that follow it), and sends each tier's fragment to that (topic, tier)'s group only if it
differs from what it last sent. On PostgreSQL a notification names the table written, and a
fan-out renders only the topics whose kind depends on a table named since the last one
(live.renderer's `tables`); SQLite cannot say what changed: every topic. A kind's
`min_interval` holds a topic back until that long after its last render (it is rendered then).
It renders every topic at least every `PERIOD` s anyway: heartbeat ages and "behind" states
change with time alone, and a missed wake must not leave a page stale. A renderer that raises
is logged and skipped; a database outage is weather (logged once, backed off, retried); the
relay itself never dies of either. `healthy_at` is when it last completed a fan-out: sockets
send keepalives only while it is recent, so a stalled relay shows the page's stale banner; a
render's query that hangs is cut by a statement timeout (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.db import DatabaseError, close_old_connections, connections

from scheduler import db
from scheduler.console import live

log = logging.getLogger("opscenter.console.relay")

Topic = tuple[str, int | None]
Key = tuple[str, int | None, str]  # kind, id, tier

DEBOUNCE = 0.04  # s after a wake before rendering: a burst of commits is one fan-out
MIN_GAP = 0.1  # s between two fan-outs at least (a long burst: at most 10 a second)
PERIOD = 2.0  # s: render at least this often while somebody follows
STALLED_AFTER = 3 * PERIOD  # s without a completed fan-out: the relay is stalled
RENDER_TIMEOUT = 5.0  # s: the renderer's statement timeout (PostgreSQL)
MAX_KEYS = 2000  # distinct (topic, tier)s one relay follows at most
LINGER = 10.0  # s the relay stays connected after its last socket left
WAIT_SLICE = 0.5  # s: the follower's longest blocking wait (how soon the relay can stop)
OUTAGE_BACKOFF_MAX = 5.0

# Groups are per process: each process's relay serves only its own sockets, also when several
# processes share a Redis channel layer.
PROCESS = f"{os.getpid()}-{secrets.token_hex(3)}"


def group_name(key: Key) -> str:
    kind, topic_id, tier = key
    return f"live.{PROCESS}.{kind}.{'_' if topic_id is None else topic_id}.{tier}"


def topic_text(kind: str, topic_id: int | None) -> str:
    return kind if topic_id is None else f"{kind}:{topic_id}"


def digest(html: str) -> bytes:
    return hashlib.blake2b(html.encode(), digest_size=16).digest()


class Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.follows: Counter[Key] = Counter()
        self.sent: dict[Key, bytes] = {}
        self.force: set[Key] = set()  # keys a socket got no snapshot of: push them again
        self.poke = asyncio.Event()  # a socket came: look now
        self.closing = False
        self.task: asyncio.Task | None = None
        self.follower = None
        self.waiter = ThreadPoolExecutor(1, thread_name_prefix="relay-follow")
        self.renderer = ThreadPoolExecutor(1, thread_name_prefix="relay-render")
        self.fanouts = 0  # how many fan-outs it made (tests and the bench read it)
        self.renders = 0
        self.outage = False
        self.errors: dict[str, str] = {}  # topic -> the last error logged for it
        # Tables named by notifications since the last fan-out; None: unknown (render all).
        self.changed: set[str] | None = set()
        self.rendered_at: dict[Topic, float] = {}  # a topic's last render in a fan-out
        self.pending: set[Topic] = set()  # due, but held back by its kind's min_interval
        self.healthy_at = time.monotonic()  # the last fan-out or snapshot that completed
        self._timed_connection = None  # the connection the statement timeout was set on

    # ------------------------------------------------------------ sockets

    def room_for(self, keys: list[Key]) -> bool:
        """Would following these keep the relay within MAX_KEYS distinct (topic, tier)s?"""
        return len(set(self.follows) | set(keys)) <= MAX_KEYS

    def stalled(self) -> bool:
        return time.monotonic() - self.healthy_at >= STALLED_AFTER

    def follow(self, keys: list[Key]) -> None:
        for key in keys:
            if self.follows[key] == 0:
                self.sent.pop(key, None)
            self.follows[key] += 1
        if self.task is None:
            self.task = self.loop.create_task(self.run(), name="live relay")
        self.poke.set()

    def unfollow(self, keys: list[Key]) -> None:
        for key in keys:
            self.follows[key] -= 1
            if self.follows[key] <= 0:
                del self.follows[key]
                self.sent.pop(key, None)
                self.force.discard(key)
        self.poke.set()

    async def snapshot(self, keys: list[Key]) -> list[str]:
        """A fresh render of these (topic, tier)s, for a socket that just connected. If the
        database is away, nothing: the next fan-out then sends to every socket of these keys."""
        try:
            rendered = await self._render(keys)
        except DatabaseError as exc:
            log.warning("live relay: no snapshot (%s)", exc)
            self.force.update(keys)
            return []
        self.healthy_at = time.monotonic()
        for key, html in rendered.items():
            if html is not None and key not in self.force:
                # the first socket of a key has just got this: no need to push it again
                self.sent.setdefault(key, digest(html))
        return [html for html in rendered.values() if html is not None]

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        idle_since: float | None = None
        last = last_full = 0.0
        backoff = 0.5
        try:
            while True:
                if not self.follows:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= LINGER:
                        break
                    self.poke.clear()
                    try:
                        await asyncio.wait_for(self.poke.wait(), LINGER)
                    except TimeoutError:
                        pass
                    continue
                idle_since = None
                left = max(min(last_full + PERIOD, self._next_pending()) - time.monotonic(), 0.0)
                if left > 0 and not self.poke.is_set():
                    woken = await self._wait(left)
                    if woken:
                        await asyncio.sleep(max(DEBOUNCE, last + MIN_GAP - time.monotonic()))
                        await self._wait(0.0)  # drain what came during the debounce
                self.poke.clear()
                last = time.monotonic()
                full = last >= last_full + PERIOD
                if full:
                    last_full = last
                try:
                    await self.fan_out(full=full)
                    backoff = 0.5
                except DatabaseError as exc:  # weather
                    if not self.outage:
                        log.warning("live relay: database unavailable (%s); retrying", exc)
                    self.outage = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, OUTAGE_BACKOFF_MAX)
                except Exception:  # never let the relay die
                    log.exception("live relay: fan-out failed")
                    await asyncio.sleep(backoff)
        finally:
            await self._close()

    async def _wait(self, timeout: float) -> bool:
        """Wait (in the follower's thread) for another process's commit or a poke."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = min(max(deadline - time.monotonic(), 0.0), WAIT_SLICE)
            notes = await self.loop.run_in_executor(self.waiter, self._follow, chunk)
            if notes:
                self._note(notes)
                return True
            if self.poke.is_set() or time.monotonic() >= deadline or not self.follows:
                return False

    def _follow(self, timeout: float) -> list:
        if self.follower is None:
            self.follower = db.follower([db.CONSOLE_CHANNEL], name="opscenter console relay")
        return self.follower.wait(timeout)

    def _note(self, notes: list[tuple[str, str]]) -> None:
        """Remember the tables the notifications name (a note without one: anything)."""
        for channel, payload in notes:
            if self.changed is None:
                return
            if channel and payload:
                self.changed.add(payload)
            else:
                self.changed = None  # SQLite's data_version, a reconnect: unknown

    def _next_pending(self) -> float:
        """When the first topic held back by its min_interval may be rendered."""
        times = [self.rendered_at.get(topic, 0.0) + self._min_interval(topic)
                 for topic in self.pending]
        return min(times, default=float("inf"))

    @staticmethod
    def _min_interval(topic: Topic) -> float:
        kind = live.RENDERERS.get(topic[0])
        return kind.min_interval if kind is not None else 0.0

    def due(self, full: bool) -> list[Key]:
        """The keys this fan-out renders: every topic on a periodic refresh, else those whose
        tables were written (all on SQLite), a socket got no snapshot of, or were held back;
        none sooner than its kind's min_interval after its last render."""
        changed, self.changed = self.changed, set()
        now = time.monotonic()
        topics: dict[Topic, list[Key]] = {}
        for key in self.follows:
            topics.setdefault((key[0], key[1]), []).append(key)
        due: set[Topic] = set()
        for topic, keys in topics.items():
            kind = live.RENDERERS.get(topic[0])
            if (full or changed is None or topic in self.pending
                    or (kind is not None and changed.intersection(kind.tables))
                    or any(key in self.force or key not in self.sent for key in keys)):
                due.add(topic)
        ready = {topic for topic in due
                 if now - self.rendered_at.get(topic, float("-inf")) >= self._min_interval(topic)}
        self.pending = due - ready
        for topic in ready:
            self.rendered_at[topic] = now
        for topic in list(self.rendered_at):
            if topic not in topics:
                del self.rendered_at[topic]
        return [key for topic in ready for key in topics[topic]]

    async def fan_out(self, full: bool = True) -> None:
        keys = self.due(full)
        if not keys:
            self.healthy_at = time.monotonic()
            return
        try:
            rendered = await self._render(keys)
        except DatabaseError:
            self.changed = None  # what this fan-out was for is owed: render all next time
            raise
        self.healthy_at = time.monotonic()
        self.fanouts += 1
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        for key, html in rendered.items():
            if html is None or key not in self.follows:
                continue
            mark = digest(html)
            if self.sent.get(key) == mark and key not in self.force:
                continue
            self.force.discard(key)
            self.sent[key] = mark
            await layer.group_send(group_name(key), {"type": "live.push", "html": html})

    async def _render(self, keys: list[Key]) -> dict[Key, str | None]:
        return await self.loop.run_in_executor(self.renderer, self._render_sync, keys)

    def _render_sync(self, keys: list[Key]) -> dict[Key, str | None]:
        """Each topic once, for all its tiers; None for a key whose renderer failed. A
        database outage raises (the loop backs off); a renderer's own bug is logged and
        skipped."""
        close_old_connections()
        try:
            self._statement_timeout()
            topics: dict[Topic, list[Key]] = {}
            for key in keys:
                topics.setdefault((key[0], key[1]), []).append(key)
            out: dict[Key, str | None] = {}
            for (kind, topic_id), tier_keys in topics.items():
                name = topic_text(kind, topic_id)
                viewers = [live.Viewer.of_tier(key[2]) for key in tier_keys]
                try:
                    htmls = live.RENDERERS[kind].render(topic_id, viewers)
                    if len(htmls) != len(viewers):
                        raise ValueError(f"{len(htmls)} fragments for {len(viewers)} tiers")
                    out.update(zip(tier_keys, htmls, strict=True))
                    self.renders += 1
                    self.errors.pop(name, None)
                except DatabaseError:
                    if connections["default"].is_usable():
                        self._renderer_failed(name)
                        out.update(dict.fromkeys(tier_keys))
                    else:
                        raise
                except Exception:
                    self._renderer_failed(name)
                    out.update(dict.fromkeys(tier_keys))
            if self.outage:
                log.info("live relay: database available again")
                self.outage = False
            return out
        except DatabaseError:
            connections["default"].close_if_unusable_or_obsolete()
            raise
        finally:
            close_old_connections()

    def _statement_timeout(self) -> None:
        """On PostgreSQL, a render's query that hangs fails after RENDER_TIMEOUT s instead of
        hanging the relay (set once per connection)."""
        connection = connections["default"]
        if connection.vendor != "postgresql":
            return
        connection.ensure_connection()
        if connection.connection is not self._timed_connection:
            with connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {int(RENDER_TIMEOUT * 1000)}")
            self._timed_connection = connection.connection

    def _renderer_failed(self, name: str) -> None:
        import traceback

        text = traceback.format_exc()
        if self.errors.get(name) != text:  # once per distinct error, not every 2 s
            log.error("live relay: the renderer of %s failed\n%s", name, text)
        self.errors[name] = text

    async def _close(self) -> None:
        self.closing = True
        if RELAYS.get(self.loop) is self:
            del RELAYS[self.loop]

        def close_follower() -> None:
            if self.follower is not None:
                self.follower.close()

        await self.loop.run_in_executor(self.waiter, close_follower)
        await self.loop.run_in_executor(self.renderer, connections.close_all)
        self.waiter.shutdown(wait=False)
        self.renderer.shutdown(wait=False)

    async def stop(self) -> None:
        """Stop now (tests, shutdown): sockets still following get nothing more."""
        self.follows.clear()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        else:
            await self._close()


RELAYS: dict[asyncio.AbstractEventLoop, Relay] = {}


def get_relay() -> Relay:
    """This process's relay (one per event loop: the server has one), made on first use."""
    loop = asyncio.get_running_loop()
    relay = RELAYS.get(loop)
    if relay is None or relay.closing:
        relay = RELAYS[loop] = Relay(loop)
    return relay


async def stop_relay() -> None:
    relay = RELAYS.get(asyncio.get_running_loop())
    if relay is not None:
        await relay.stop()
