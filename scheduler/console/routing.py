"""The console's websocket routes (wrapped for origin and session checks in opscenter/asgi.py)."""

from __future__ import annotations

from django.urls import path

from scheduler.console.consumers import LiveConsumer

websocket_urlpatterns: list = [
    path("ws/live/", LiveConsumer.as_asgi()),
]
