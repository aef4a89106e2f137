"""Jobs die with their node: kill -9 of a member takes its shell jobs' processes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler import reaper
from scheduler.models import Member, Task
from tests.conftest import add_job, is_postgres, wait_for

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


def gone(pid: int) -> bool:
    """No such process, or only its zombie (a container's PID 1 may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def test_the_reaper_kills_every_process_of_its_token_when_its_pipe_closes(tmp_path):
    token = "t" + os.urandom(8).hex()
    env = {**os.environ, reaper.TOKEN_VAR: token}
    other = {**os.environ, reaper.TOKEN_VAR: token + "x"}  # another node's job: not touched
    pids = tmp_path / "pids"
    # A process in a session of its own and its child that escaped into another one.
    script = f"setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & echo $$ >> {pids}; exec sleep 60"
    mine = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    theirs = subprocess.Popen(["sleep", "60"], env=other, start_new_session=True)
    try:
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=5)
        handle = reaper.Reaper(token)
        handle.start()
        assert handle.alive()
        handle.stop()
        victims = [int(p) for p in pids.read_text().split()]
        assert all(gone(p) for p in victims)
        assert theirs.poll() is None, "a process of another token was killed"
        assert handle.exit_code() == 0
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()


def test_the_reaper_ignores_a_terminal_interrupt():
    handle = reaper.Reaper("tok")
    handle.start()
    try:
        time.sleep(0.2)  # let it install its handlers (nothing to poll for)
        os.kill(handle.pid, signal.SIGINT)
        time.sleep(0.2)
        assert handle.alive()
    finally:
        handle.stop()
    assert handle.exit_code() == 0


def test_a_parameter_cannot_take_the_token_from_a_shell_job(monkeypatch):
    from scheduler.executors import base, shell

    monkeypatch.setenv(reaper.TOKEN_VAR, "the-node's")
    run = base.TaskRun(task_id=1, job_name="j", kind="shell", command="true",
                            parameters={reaper.TOKEN_VAR: "mine"})
    assert shell.shell_environment(run)[reaper.TOKEN_VAR] == "the-node's"


# ------------------------------------------------------------------ real nodes


def ticks(path: Path) -> dict[str, list[float]]:
    """The job's log of itself: task id -> the times it was seen running."""
    out: dict[str, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.setdefault(parts[0], []).append(float(parts[1]))
    return out


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL")
def test_kill_9_of_a_node_kills_its_shell_job_and_the_recovery_never_overlaps_it(
        cluster, start_node, tmp_path):
    pids, runs = tmp_path / "pids", tmp_path / "runs"
    # The shell, a child in its process group and a child that left it (setsid), then a
    # run that says every 50 ms that it is still running.
    command = (
        f"sh -c 'echo $$ >> {pids}; exec sleep 60' & "
        f"setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & "
        f"echo $$ >> {pids}; "
        f"while true; do echo \"$OPSCENTER_TASK_ID $(date +%s.%N)\" >> {runs}; sleep 0.05; done"
    )
    job = add_job(cluster, "long", command, kind="shell", max_parallel=1, recover_lost=True)
    a = start_node("--cluster", "test", "--node", "a", "--distributed-orders", *FAST)
    b = start_node("--cluster", "test", "--node", "b", "--distributed-orders", *FAST)
    wait_for(lambda: Member.objects.filter(state="active").count() == 2, timeout=20)
    task = job.run_now(actor="tester")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, timeout=20,
             message="the job and its children to start")
    owner = Task.objects.select_related("member").get(pk=task.pk).member.name
    victim, survivor = (a, b) if owner == "a" else (b, a)
    victims = [int(p) for p in pids.read_text().split()]

    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    wait_for(lambda: all(gone(p) for p in victims), timeout=2.0,
             message="every process of the killed node's job to be gone")

    recovery = wait_for(lambda: Task.objects.filter(retry_of=task, trigger="recovery",
                                                    state="running").first(), timeout=20,
                        message="the recovery to start on the other member")
    assert recovery.member.name != owner
    wait_for(lambda: len(ticks(runs).get(str(recovery.pk), [])) >= 5, timeout=10)
    task.refresh_from_db()
    assert task.state == "lost"
    seen = ticks(runs)
    assert max(seen[str(task.pk)]) < min(seen[str(recovery.pk)]), "the two runs overlapped"
    assert survivor.proc.poll() is None
    assert "ended; killed" in victim.output(), victim.output()


def test_the_reaper_runs_without_django():
    """It is started as a plain file with -I: nothing but the standard library."""
    out = subprocess.run([sys.executable, "-I", reaper.__file__], input=b"", timeout=10,
                         capture_output=True)
    assert out.returncode == 0, out.stderr


def reapers_of(pid: int) -> list:
    """The live reaper processes a node started."""
    import psutil

    found = []
    for child in psutil.Process(pid).children():
        try:
            if any(part.endswith("reaper.py") for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie the node has not collected yet
            continue
    return found


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_node_starts_a_new_reaper_when_its_reaper_dies(cluster, start_node):
    node = start_node("--cluster", "test", "--node", "n1", *FAST)
    first = wait_for(lambda: reapers_of(node.pid), timeout=20, message="the reaper")
    assert len(first) == 1
    first[0].kill()
    again = wait_for(lambda: [p for p in reapers_of(node.pid) if p.pid != first[0].pid],
                     timeout=10, message="a new reaper")
    assert len(again) == 1
    wait_for(lambda: "starting a new one" in node.output(), timeout=20,
             message="the node to say it starts a new reaper")
    # The new one knows the node's token: a job started now still dies with the node.
    job = add_job(cluster, "sleeper", "echo started; exec sleep 60", kind="shell")
    task = job.run_now()
    wait_for(lambda: "started" in Task.objects.get(pk=task.pk).log_text(), timeout=20)
    import psutil

    jobs = [p for p in psutil.Process(node.pid).children() if p.name() == "sleep"]
    assert len(jobs) == 1
    os.kill(node.pid, signal.SIGKILL)
    node.proc.wait(timeout=10)
    wait_for(lambda: gone(jobs[0].pid), timeout=2.0, message="the job to die with its node")
