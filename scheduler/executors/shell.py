"""Shell jobs: a command line run with /bin/sh -c (executor node; a Celery worker runs it with
this same code).

The command runs as its own process group (session), so a timeout or cancel can stop everything
it started, not only the shell; its output streams into the task's log as it comes.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from typing import IO, cast

from scheduler.executors import base
from scheduler.executors.base import Cancel, Entry, Executor, LogBuffer, Outcome, Support, TaskRun
from scheduler.reaper import TOKEN_VAR

# After SIGKILL, how long to wait for the kernel to finish off the group (a process stuck in
# uninterruptible I/O dies only when the I/O returns) before giving up and saying so in the log.
_KILL_WAIT = 5.0

# How long to keep reading a finished job's output pipe. Normally EOF comes at once; it does not
# when a process that escaped the process group (setsid, a daemonizing service) still holds it.
READER_JOIN = 1.0

_SHELL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def execute(run: TaskRun, log: LogBuffer, cancel: Cancel, entry: Entry,
            kill_grace: float) -> Outcome:
    cwd = run.working_directory or None
    if cwd is not None and not os.path.isdir(cwd):
        return Outcome("failed", None, f"working directory does not exist: {cwd}")
    env = shell_environment(run)
    refusal = entry.refusal(cancel)
    if refusal is not None:
        return refusal
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", run.command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session, hence own process group (pgid == pid): a timeout or cancel can signal
            # everything the command started, and the job does not get the daemon's signals.
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the command or environment
        return Outcome("failed", None, f"could not start /bin/sh: {base.describe(exc)}")
    entry.at = time.monotonic()

    stopped_by = supervise(proc, run, log, cancel, kill_grace)
    code = proc.returncode
    if stopped_by == "timed_out":
        return Outcome("timed_out", code, f"timed out after {run.timeout:g} s")
    if stopped_by == "cancelled":
        return Outcome("cancelled", code, base.cancel_error(cancel))
    if code == 0:
        return Outcome("succeeded", 0)
    return Outcome("failed", code, exit_error(code))


def supervise(proc: subprocess.Popen, run: TaskRun, log: LogBuffer, cancel: Cancel,
              kill_grace: float) -> str | None:
    """Copy the process's output into the log until it ends, stopping its whole group on a
    timeout or cancel (or when it leaves processes behind). Returns None, or "timed_out" /
    "cancelled" when it had to be stopped."""
    stdout = cast(IO[bytes], proc.stdout)  # not None: stdout=PIPE
    stop_reading = threading.Event()
    reader = threading.Thread(
        target=_pump_output,
        args=(stdout.fileno(), log, stop_reading),
        name=f"opscenter-output-{run.task_id}",
        daemon=True,
    )
    try:
        reader.start()
        stopped_by = _wait_process(proc, cancel, base.deadline_of(run.timeout))
        if stopped_by is not None:
            _kill_group(proc, kill_grace, log)
        elif _group_alive(proc.pid):
            # The command returned but left processes behind (`cmd &`); a scheduled task must
            # not leave anything running once its task row says it has ended.
            log.write(
                "[opscenter] the command exited but left processes running in its process "
                "group; terminating them\n"
            )
            _kill_group(proc, kill_grace, log)
    except BaseException:
        # Whatever went wrong in here, do not leave the job running unsupervised.
        _kill_group(proc, 0, log)
        raise
    finally:
        reader.join(READER_JOIN)
        if reader.is_alive():
            log.write(
                "[opscenter] a process outside the job's process group still holds its output "
                "open; stopped reading it\n"
            )
            stop_reading.set()
            reader.join()
        stdout.close()
    return stopped_by


def shell_environment(run: TaskRun) -> dict[str, str]:
    env = dict(os.environ)
    plain: dict[str, str] = {}
    prefixed: dict[str, str] = {}
    for name, value in run.parameters.items():
        name = str(name)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        prefixed["OPSCENTER_PARAM_" + _NON_ALNUM.sub("_", name).upper()] = text
        if _SHELL_IDENTIFIER.fullmatch(name) and not base.is_reserved_parameter(name):
            plain[name] = text
    # Later updates win: a parameter may shadow an ordinary variable (never a reserved one),
    # and nothing a job definition says can spoof the OPSCENTER_* values the scheduler sets.
    env.update(plain)
    env.update(prefixed)
    env.update(
        OPSCENTER_TASK_ID=str(run.task_id),
        OPSCENTER_JOB=run.job_name,
        OPSCENTER_ATTEMPT=str(run.attempt),
        OPSCENTER_SCHEDULED_FOR=base.iso_utc(run.scheduled_for),
        OPSCENTER_CLUSTER=run.cluster,
        OPSCENTER_MEMBER=run.member,
    )
    _keep_node_token(env)
    return env


def _keep_node_token(env: dict[str, str]) -> None:
    """The node's reaper finds its jobs' processes by this variable: no parameter may change
    or drop it, or the job would outlive its node."""
    token = os.environ.get(TOKEN_VAR)
    if token:
        env[TOKEN_VAR] = token


def _pump_output(fd: int, log: LogBuffer, stop: threading.Event) -> None:
    """Copy the job's output into the log as it arrives (reader thread).

    Reads whatever the pipe holds rather than whole lines, so a long line without a newline (a
    progress bar) shows up at once. The incremental decoder keeps a UTF-8 character that is split
    across two reads intact. poll() rather than select() because select() cannot watch a file
    descriptor above 1023, which a busy daemon reaches; its timeout only lets us see `stop`."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not stop.is_set():
        if not poller.poll(100):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # EOF: every process that had the pipe has closed it
        log.write(decoder.decode(chunk))
    log.write(decoder.decode(b"", final=True))


def _wait_process(proc: subprocess.Popen, cancel: Cancel, deadline: float | None) -> str | None:
    """Wait for the shell to exit; return None, or "timed_out"/"cancelled" if we must stop it.

    Waiting on the cancel event means a cancel is seen at once; the process exit is polled, with
    waits that start at 1 ms (a trivial command is over in a few ms) and grow to base.POLL_MAX."""
    pause = 0.001
    while proc.poll() is None:
        if cancel.requested:
            return "cancelled"
        wait = pause
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timed_out"
            wait = min(wait, left)
        cancel.event.wait(wait)
        pause = min(pause * 2, base.POLL_MAX)
    return None


def _kill_group(proc: subprocess.Popen, grace: float, log: LogBuffer) -> None:
    """SIGTERM the job's process group, SIGKILL it after `grace` s, and wait until it is gone."""
    pgid = proc.pid  # start_new_session made the shell the leader of its own group
    gone = False
    if grace > 0:
        _signal_group(pgid, signal.SIGTERM)
        gone = _wait_group_gone(proc, grace)
        if not gone:
            log.write(f"[opscenter] job still running {grace:g} s after SIGTERM; sending SIGKILL\n")
    if not gone:
        _signal_group(pgid, signal.SIGKILL)
        if not _wait_group_gone(proc, _KILL_WAIT):
            log.write(f"[opscenter] job processes still present {_KILL_WAIT:g} s after SIGKILL\n")
    try:
        # The shell is dead (a zombie counts as gone above); reap it for its return code.
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # already gone


def _wait_group_gone(proc: subprocess.Popen, limit: float) -> bool:
    deadline = time.monotonic() + limit
    pause = 0.001
    while True:
        proc.poll()  # reap the shell, our own child, so it does not linger as a zombie
        if not _group_alive(proc.pid):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, base.POLL_MAX)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member that changed its user (setuid) still exists
    # killpg() also succeeds while only zombies are left. Orphaned children are reparented to
    # PID 1, and in a container that PID 1 may never reap them (it is so on the machine this was
    # written on), so look at the members' states where /proc tells them.
    return _group_has_running_member(pgid)


def _group_has_running_member(pgid: int) -> bool:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc (not Linux): trust killpg()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = stat.rpartition(b")")[2].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def exit_error(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


EXECUTOR = Executor(
    Support(executor="node", kind="shell", runs_on="the node, as a process group of its own",
            isolations=(), time_limit=True, cancel=True, live_log=True, data_map=False,
            note="a timeout or cancel: SIGTERM to the whole group, SIGKILL 5 s later"),
    execute,
)
