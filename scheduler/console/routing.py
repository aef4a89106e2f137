"""The console's websocket routes (wrapped for origin and session checks in opscenter/asgi.py)."""

from __future__ import annotations

websocket_urlpatterns: list = []
