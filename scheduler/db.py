"""Database helpers shared by the node and the console: which vendor, and how to follow changes.

Following changes made by other processes needs a connection of its own, apart from Django's:
- PostgreSQL: `Listener` LISTENs on channels on a dedicated autocommit psycopg 3 connection
  (made from `connection.get_connection_params()`, so it goes where Django goes) and waits
  for notifications with a timeout. The nodes' own channel is `opscenter` (wakeup.py); the
  console's is `opscenter_console`, fed by statement triggers (migration 0011) on every table
  the console shows, whatever door wrote them.
- SQLite: `DataVersionWatcher` polls `PRAGMA data_version` on a dedicated raw `sqlite3`
  connection; the number changes when any other connection commits to the file.

Both reconnect after errors by themselves (a lost database is weather): `wait()` logs, backs off
within its timeout and returns nothing; after a reconnect it returns `RECONNECTED`, because
notifications sent while the connection was down are lost and the caller should look again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable

from django.db import DEFAULT_DB_ALIAS, connections

log = logging.getLogger("opscenter.db")

CONSOLE_CHANNEL = "opscenter_console"
RECONNECTED = ("", "reconnected")  # (channel, payload) returned after a reconnect
CHANGED = ("", "changed")  # what a DataVersionWatcher returns: it cannot say what changed
MAX_BACKOFF = 2.0


def is_pg(using: str = DEFAULT_DB_ALIAS) -> bool:
    return connections[using].vendor == "postgresql"


def prepared(sql: str, params) -> list[tuple]:
    """PostgreSQL: run a fixed-text statement prepared on the member's connection (a raw
    psycopg cursor: server-side binding, planned once per connection, no ORM on the way)."""
    import psycopg
    from django.db import connection

    # wrap_database_errors: a raw psycopg cursor bypasses Django's error mapping, and the node
    # tells a lost connection (weather: reconnect, take the member lock again) from other
    # failures by Django's OperationalError/InterfaceError.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall()


class Listener:
    """LISTEN on `channels` on a connection of its own (PostgreSQL only)."""

    def __init__(self, channels: Iterable[str], *, name: str = "listen",
                 using: str = DEFAULT_DB_ALIAS):
        self.channels = list(channels)
        self.name = name
        self.using = using
        self.conn = None
        self.connected_before = False
        self.backoff = 0.1
        self.failing = False

    def params(self) -> dict:
        params = connections[self.using].get_connection_params()
        # Django's cursor class and adapters are for its own connection; this one only listens.
        for key in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(key, None)
        params["autocommit"] = True
        params["application_name"] = self.name[:63]
        return params

    def _connect(self) -> None:
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(**self.params())
        try:
            for channel in self.channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """(channel, payload) of the notifications received within `timeout` s (returns at the
        first one, with the others that came with it); [] if none came."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self.conn is None:
            try:
                self._connect()
            except Exception as exc:
                self._failed(exc, deadline)
                return []
            reconnected = self.connected_before
            self.connected_before = True
            if self.failing:
                log.info("%s: listening again", self.name)
            self.failing, self.backoff = False, 0.1
            if reconnected:
                return [RECONNECTED]
        try:
            left = max(deadline - time.monotonic(), 0.0)
            notes = list(self.conn.notifies(timeout=left, stop_after=1))
            if notes:  # and whatever else is already there
                notes += list(self.conn.notifies(timeout=0.0))
        except Exception as exc:
            self.close()
            self._failed(exc, deadline)
            return []
        return [(note.channel, note.payload) for note in notes]

    def _failed(self, exc: Exception, deadline: float) -> None:
        if not self.failing:
            log.warning("%s: %s (retrying)", self.name, str(exc).strip() or type(exc).__name__)
        else:
            log.debug("%s: %s", self.name, exc)
        self.failing = True
        time.sleep(max(min(self.backoff, deadline - time.monotonic()), 0.0))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already gone
                log.debug("%s: close", self.name, exc_info=True)


class DataVersionWatcher:
    """Polls `PRAGMA data_version` on a raw sqlite3 connection of its own (SQLite only)."""

    def __init__(self, *, name: str = "watch", using: str = DEFAULT_DB_ALIAS,
                 interval: float = 0.02):
        self.name = name
        self.using = using
        self.interval = interval
        self.conn: sqlite3.Connection | None = None
        self.version: int | None = None
        self.connected_before = False
        self.failing = False
        self.backoff = 0.1

    def _read(self) -> int:
        if self.conn is None:
            path = connections[self.using].settings_dict["NAME"]
            self.conn = sqlite3.connect(str(path), timeout=5, isolation_level=None,
                                        check_same_thread=False)
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """[CHANGED] as soon as another connection has committed, else [] after `timeout` s."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                version = self._read()
            except Exception as exc:
                self.close()
                if not self.failing:
                    log.warning("%s: %s (retrying)", self.name, exc)
                self.failing = True
                time.sleep(max(min(self.backoff, deadline - time.monotonic()), 0.0))
                self.backoff = min(self.backoff * 2, MAX_BACKOFF)
                return []
            self.failing, self.backoff = False, 0.1
            if self.version is None:  # a new connection: its number means nothing yet
                self.version = version
                if self.connected_before:  # commits while it was down went unseen
                    return [RECONNECTED]
                self.connected_before = True
            elif version != self.version:
                self.version = version
                return [CHANGED]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(self.interval, left))

    def close(self) -> None:
        conn, self.conn = self.conn, None
        self.version = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("%s: close", self.name, exc_info=True)


def follower(channels: Iterable[str], *, name: str, using: str = DEFAULT_DB_ALIAS):
    """What follows other processes' commits on this database: a Listener on PostgreSQL
    (notifications on `channels`), a DataVersionWatcher on SQLite (any commit)."""
    if is_pg(using):
        return Listener(channels, name=name, using=using)
    return DataVersionWatcher(name=name, using=using)
