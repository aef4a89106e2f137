"""The doors a node process opens at its start: a database that is not there is said in one
line, and a member killed with -9 is replaced at once by its successor on the same host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from scheduler.models import Event, Member
from tests.conftest import ROOT, wait_for


def start_with(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("url", "reason"), [
    ("postgres://postgres@127.0.0.1:5432/opscenter_nonexistent_db",
     'database "opscenter_nonexistent_db" does not exist'),
    ("postgres://nobody@127.0.0.1:5432/postgres", 'role "nobody" does not exist'),
    ("postgres://postgres:secret@127.0.0.1:1/postgres", "Connection refused"),
])
@pytest.mark.parametrize("command", [["runscheduler", "--cluster", "c"],
                                     ["jobs", "--cluster", "c"]])
def test_a_database_that_is_not_there_is_said_in_one_line(url, reason, command):
    result = start_with(url, *command)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{command[0]}: cannot reach the database" in lines[0]
    assert reason in lines[0]
    assert "secret" not in result.stderr  # the password is masked


@pytest.mark.parametrize("url", ["", "nonsense"])
def test_an_empty_or_garbage_database_url_is_said_in_one_line(url):
    # Empty is an error, not the default SQLite: an emptied variable is a failed deployment
    # template far more often than a wish, and a node on a private SQLite would fire every
    # job of the cluster a second time.
    result = start_with(url, "jobs", "--cluster", "c")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "DATABASE_URL" in result.stderr


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_node_restarted_right_after_kill_9_joins_at_once_and_the_old_one_is_dead(
        cluster, start_node):
    # The default dead-after (5 s): without looking at the process table the successor would
    # be refused until the killed member's heartbeat went stale.
    first = start_node("--cluster", "test", "--node", "n1")
    old = wait_for(lambda: Member.objects.filter(name="n1", state="active").first(),
                   timeout=30, message="the first node to join")
    first.signal(signal.SIGKILL)
    first.wait()
    started = time.monotonic()
    second = start_node("--cluster", "test", "--node", "n1")
    new = wait_for(lambda: Member.objects.filter(name="n1", state="active")
                   .exclude(pk=old.pk).first(), timeout=30,
                   message=f"the successor to join: {second.output()}")
    # Process start-up (Django, imports) under a loaded machine is most of this.
    assert time.monotonic() - started < 4.5, second.output()
    assert "refused" not in second.output()
    old.refresh_from_db()
    assert old.state == "dead" and new.pid == second.pid
    assert old.stop_reason == f"process {old.pid} on {old.host} is gone"
    assert Event.objects.filter(
        kind="member.dead", member=old,
        message=f"member n1 (pid {old.pid}) on this host is gone: declared dead by its "
                "successor").exists()


@pytest.mark.django_db
def test_a_live_member_on_this_host_whose_process_runs_is_not_replaced(cluster):
    from scheduler.membership import MemberOptions, MemberRefused, register

    # This test process is alive but is no scheduler node: a PID that another program now
    # holds is gone too. A real node (its cmdline names runscheduler) keeps its name.
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               "runscheduler"])
    try:
        import socket

        Member.objects.create(cluster=cluster, name="n1", mode="single", host=socket.gethostname(),
                              pid=helper.pid, version="0", state="active")
        with pytest.raises(MemberRefused, match="a live member named 'n1'"):
            register(MemberOptions(cluster="test", name="n1", mode="single", role="",
                                   backup_precedence=0, reclaim=False, labels=(), workers=1),
                     dead_after=5.0)
    finally:
        helper.kill()
        helper.wait()
