"""Shared fixtures: a cluster with jobs, and real scheduler node processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll until `predicate()` is truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def add_job(cluster, name, command="tests.test_node:noop", kind="python", **kw):
    """A job saved through full validation, as every door saves one."""
    from scheduler.models import Job

    job = Job(cluster=cluster, name=name, kind=kind, command=command, **kw)
    job.full_clean()
    job.save()
    return job


def add_interval(job, seconds=1, **kw):
    from scheduler.models import Schedule

    schedule = Schedule(job=job, kind="interval", interval_seconds=seconds, **kw)
    schedule.full_clean()
    schedule.save()
    return schedule


def database_url() -> str:
    """The URL of the test database, for node processes started by a test."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def is_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


class NodeProcess:
    """A real `manage.py runscheduler` process against the test database."""

    def __init__(self, *args: str, env: dict | None = None, prefix: list[str] | None = None):
        self.args = list(args)
        full_env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = tmp / f"opsc-node-{os.getpid()}-{id(self)}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, str(ROOT / "manage.py"), "runscheduler", *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        # The whole group: a wrapper such as faketime passes no signal on. Jobs run in
        # sessions of their own, so they are not hit.
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        # Kill the group even when the leader is gone: a child of a wrapper may live on.
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def start_node():
    """Start node processes; every one still running at the end is killed."""
    nodes: list[NodeProcess] = []

    def start(*args: str, **kwargs) -> NodeProcess:
        node = NodeProcess(*args, **kwargs)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture(autouse=True)
def _no_cached_fires():
    """The dashboard caches fires per (cluster, minute) in the process: not across tests."""
    yield
    import sys

    dashboard = sys.modules.get("scheduler.console.views.dashboard")
    if dashboard is not None:
        dashboard.FIRES.clear()


@pytest.fixture
def cluster(db):
    from scheduler.models import Cluster

    return Cluster.objects.create(name="test")


@pytest.fixture
def shell_job(cluster):
    from scheduler.models import Job

    return Job.objects.create(cluster=cluster, name="echo", kind="shell",
                              command="echo hello from $OPSCENTER_JOB")


# ------------------------------------------------------------------ console users by role


def console_user(username: str, group: str | None):
    """A user in one of the groups made on migrate (viewer, operator, administrator), or in
    none. Console users need not be staff: the console is not the admin."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, password="pw-" + username)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def client_for(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client(db):
    return client_for(console_user("vera", "viewer"))


@pytest.fixture
def operator_client(db):
    return client_for(console_user("otto", "operator"))


@pytest.fixture
def admin_role_client(db):
    return client_for(console_user("ada", "administrator"))


@pytest.fixture
def nobody_client(db):
    return client_for(console_user("nemo", None))
