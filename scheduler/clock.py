"""The one clock: leases, heartbeats and due checks read the database's time, never a node's."""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from django.utils import timezone


def db_now(using=None) -> datetime:
    """The database's current time (real time, not the start of the transaction).

    The embedded SQLite database lives on this machine, so its clock is this machine's.
    """
    conn = connection if using is None else using
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            return cursor.fetchone()[0]
    return timezone.now()
