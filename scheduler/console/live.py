"""What a page can have pushed to it: topics, and the renderer of each topic's fragments.

A page names the topics it shows in its live socket's URL (`/ws/live/?topics=cluster:3,
job:17`). A topic is "<kind>:<id>", or a bare kind for the whole install ("dashboard"): each
kind declares which (`takes_id`; None: either, as jobs), and a topic of the wrong shape is
refused. The relay (relay.py) wakes when the database changes, renders each topic that
somebody follows, and sends each permission tier's fragment to every browser of that tier
that follows it: the cost of a change is one render per topic, whatever the number of
browsers.

A kind is registered with `@renderer(kind, takes_id=..., tables=(...), min_interval=...)`:
- the function is `fn(topic_id, viewers) -> list[str]`: it builds its context ONCE and
  returns one fragment per viewer (tier), in the viewers' order (`render_parts` does that
  for the usual "these partials of this template");
- `tables`: the database tables its fragments show; on PostgreSQL the relay re-renders a
  topic only when one of them was written (its periodic refresh renders every topic);
- `min_interval`: the least time (s) between two renders of one topic of this kind.

A fragment's top-level elements carry `id` and `hx-swap-oob="true"` (htmx's websocket
extension swaps them into the page by id). It renders with the same template partials as the
page itself (`"console/cluster.html#members"`), so a push and a reload show the same thing.
It never holds a form that posts: rendered without a request it has no CSRF token, and the
page's own forms (rendered with the page) must stay. Times are rendered as `<time datetime>`
in UTC; console.js shows them in the viewer's zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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


Renderer = Callable[[int | None, Sequence[Viewer]], list[str]]


@dataclass(frozen=True)
class Kind:
    """A topic kind: its renderer and what it declares about itself."""

    render: Renderer
    takes_id: bool | None  # None: either (jobs: one cluster's, or every cluster's)
    tables: tuple[str, ...]
    min_interval: float = 0.0


RENDERERS: dict[str, Kind] = {}


def renderer(kind: str, *, takes_id: bool | None, tables: Sequence[str], min_interval: float = 0.0):
    """Register the renderer of a topic kind (a decorator); see the module's docstring."""

    def register(function: Renderer) -> Renderer:
        RENDERERS[kind] = Kind(function, takes_id, tuple(tables), min_interval)
        return function

    return register


def render_parts(template: str, parts: Sequence[str], context: dict,
                 viewers: Sequence[Viewer]) -> list[str]:
    """Per viewer: these partials of `template` with `context` (built once) and the viewer's."""
    from django.template.loader import get_template

    compiled = [get_template(f"{template}#{part}") for part in parts]
    return ["".join(t.render({**context, **viewer.context()}) for t in compiled)
            for viewer in viewers]


def parse_topics(text: str) -> list[tuple[str, int | None]]:
    """The valid topics a socket asks for, each once, at most MAX_TOPICS: a known kind, with
    an id if and only if the kind takes one. Anything else is dropped (an empty list: the
    socket asked for nothing it may follow)."""
    topics: list[tuple[str, int | None]] = []
    for part in text.split(",")[:MAX_TOPICS * 5]:
        match = TOPIC.match(part.strip())
        if not match or match.group(1) not in RENDERERS:
            continue
        kind, raw_id = match.group(1), match.group(2)
        takes_id = RENDERERS[kind].takes_id
        if takes_id is not None and takes_id != (raw_id is not None):
            continue
        key = (kind, int(raw_id) if raw_id is not None else None)
        if key not in topics:
            topics.append(key)
        if len(topics) >= MAX_TOPICS:
            break
    return topics
