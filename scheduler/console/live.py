"""What a page can have pushed to it: topics, and the renderer of each topic's fragments.

A page names the topics it shows in its live socket's URL (`/ws/live/?topics=cluster:3,
job:17`). A topic is "<kind>:<id>" (or a bare kind for the whole install, e.g. "dashboard").
The relay (relay.py) wakes when the database changes, renders each topic that somebody
follows once per permission tier, and sends the fragment to every browser of that tier that
follows it: the cost of a change is one render per topic and tier, whatever the number of
browsers.

A renderer returns HTML whose top-level elements carry `id` and `hx-swap-oob="true"` (htmx's
websocket extension swaps them into the page by id). It renders with the same template
partials as the page itself (`"console/cluster.html#members"`), so a push and a reload show
the same thing. Times are rendered as `<time datetime>` in UTC; console.js shows them in
the viewer's zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

TOPIC = re.compile(r"^([a-z_]{1,30})(?::([0-9]{1,18}))?$")
MAX_TOPICS = 20


@dataclass(frozen=True)
class Viewer:
    """Whom a fragment is rendered for: only what differs between tiers (access.tier)."""

    may_operate: bool
    may_switchover: bool

    @classmethod
    def of_tier(cls, tier: str) -> Viewer:
        return cls(may_operate=tier[1:2] == "1", may_switchover=tier[3:4] == "1")

    def context(self) -> dict:
        from scheduler.console.access import NOT_OPERATOR, NOT_SWITCHER

        return {"may_operate": self.may_operate, "may_switchover": self.may_switchover,
                "not_operator": NOT_OPERATOR, "not_switcher": NOT_SWITCHER,
                "display_zone": ZoneInfo("UTC"), "pushed": True}


Renderer = Callable[[int | None, Viewer], str]
RENDERERS: dict[str, Renderer] = {}


def renderer(kind: str):
    """Register the renderer of a topic kind (a decorator)."""

    def register(function: Renderer) -> Renderer:
        RENDERERS[kind] = function
        return function

    return register


def parse_topics(text: str) -> list[tuple[str, int | None]]:
    """The topics a socket asks for; unknown or malformed ones are dropped, at most 20."""
    topics: list[tuple[str, int | None]] = []
    for part in text.split(","):
        match = TOPIC.match(part.strip())
        if match and match.group(1) in RENDERERS:
            key = (match.group(1), int(match.group(2)) if match.group(2) else None)
            if key not in topics:
                topics.append(key)
        if len(topics) >= MAX_TOPICS:
            break
    return topics
