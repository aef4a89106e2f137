"""The console's websocket routes (wrapped for origin and session checks in opscenter/asgi.py)."""

from __future__ import annotations

from django.urls import path

# The pages' renderers register when their views are imported; a socket may connect before
# any HTTP request has loaded the URLconf, so load it here.
import scheduler.console.urls  # noqa: F401
from scheduler.console.consumers import LiveConsumer

websocket_urlpatterns: list = [
    path("ws/live/", LiveConsumer.as_asgi()),
]
