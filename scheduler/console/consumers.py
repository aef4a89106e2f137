"""The live socket: `/ws/live/?topics=cluster:3,job:17`.

Only a logged-in user with the view permission may follow (else the socket is accepted and
closed at once with code 4403). A socket that names no valid topic (live.parse_topics) is
closed with 4400, one that would take the relay past its cap of (topic, tier)s with 4429
(htmx's websocket extension does not retry 4xxx closes). The socket
joins the relay's group of each of its topics for its user's tier, and at once gets a fresh
render of each (a reconnect is a fresh snapshot, so nothing missed while away stays stale).
Then it gets what the relay pushes, and a keepalive when it has been silent for
`KEEPALIVE` s, but only while the relay is not stalled (it completed a fan-out lately): the
page's banner (console.js, 10 s of silence) means a dead socket or a stuck relay.
What the browser sends is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from scheduler.console import access, live, relay

log = logging.getLogger("opscenter.console.live")

KEEPALIVE = 4.0  # s of silence before a keepalive
# A message with no element: htmx's ws extension swaps nothing and fires htmx:wsAfterMessage,
# which is what console.js counts as a sign of life.
KEEPALIVE_MESSAGE = "<!-- live -->"
REFUSED = 4403
BAD_TOPICS = 4400
TOO_MANY = 4429


@database_sync_to_async
def who(user) -> tuple[bool, str]:
    return access.can_view(user), access.tier(user) if access.can_view(user) else ""


class LiveConsumer(AsyncWebsocketConsumer):
    keys: list = []
    keepalive: asyncio.Task | None = None

    async def connect(self) -> None:
        self.keys = []
        user = self.scope.get("user")
        allowed, tier = (False, "") if user is None else await who(user)
        if not allowed:
            await self.accept()
            await self.close(code=REFUSED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        topics = live.parse_topics(",".join(query.get("topics", [])))
        if not topics:
            await self.accept()
            await self.close(code=BAD_TOPICS, reason="no valid topic to follow")
            return
        keys = [(kind, topic_id, tier) for kind, topic_id in topics]
        if not relay.get_relay().room_for(keys):
            await self.accept()
            await self.close(code=TOO_MANY, reason="this server follows too many topics")
            return
        for key in keys:
            await self.channel_layer.group_add(relay.group_name(key), self.channel_name)
        await self.accept()
        # get and follow in one step (no await between): a relay about to end is not reused
        self.relay = relay.get_relay()
        self.relay.follow(keys)
        self.keys = keys
        self.last_sent = asyncio.get_running_loop().time()
        self.keepalive = asyncio.create_task(self._keepalive())
        for html in await self.relay.snapshot(keys):
            await self._send(html)

    async def disconnect(self, code) -> None:
        if self.keepalive is not None:
            self.keepalive.cancel()
        if self.keys:
            self.relay.unfollow(self.keys)
            for key in self.keys:
                await self.channel_layer.group_discard(relay.group_name(key), self.channel_name)
            self.keys = []

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """Browsers have nothing to say here (htmx may send a ping): ignored."""

    async def live_push(self, event) -> None:
        await self._send(event["html"])

    async def _send(self, html: str) -> None:
        self.last_sent = asyncio.get_running_loop().time()
        await self.send(text_data=html)

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self.last_sent + KEEPALIVE - loop.time(), 0.05))
            if loop.time() - self.last_sent >= KEEPALIVE and not self.relay.stalled():
                try:
                    await self._send(KEEPALIVE_MESSAGE)
                except Exception:  # the socket is gone; disconnect() ends this task
                    log.debug("keepalive", exc_info=True)
                    return
            elif loop.time() - self.last_sent >= KEEPALIVE:
                await asyncio.sleep(KEEPALIVE)  # stalled: silence (the banner); look again
