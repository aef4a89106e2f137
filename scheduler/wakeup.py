"""Wake the nodes of a cluster after a commit (PostgreSQL NOTIFY; SQLite nodes poll each beat)."""

from __future__ import annotations

from django.db import connection, transaction

CHANNEL = "opscenter"


def notify_nodes(cluster_id: int | None) -> None:
    if cluster_id is None or connection.vendor != "postgresql":
        return

    def send() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(cluster_id)])

    transaction.on_commit(send)
