"""Run one task of a job: a shell command line or a Python callable.

The node daemon calls `execute()` from its worker thread pool and does every database write
itself, so this module is Django-free: it gets plain values (`TaskRun`), writes the task's output
into a `LogBuffer` that the daemon drains while the task runs, watches a `Cancel` handle, and
returns an `Outcome`. `execute()` never raises.

Shell jobs run as their own process group (session), so a timeout or cancel can stop everything
the command started, not only the shell. Python jobs run in a daemon thread of their own; a
thread cannot be killed, so a job that ignores `ctx.cancelled` is abandoned (and counted) rather
than waited for forever.
"""

from __future__ import annotations

import codecs
import copy
import importlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

from scheduler.reaper import TOKEN_VAR

# Seconds between SIGTERM and SIGKILL for shell jobs, and how long a cancelled python job gets to
# return before its thread is abandoned.
KILL_GRACE = 5.0

# After SIGKILL, how long to wait for the kernel to finish off the group (a process stuck in
# uninterruptible I/O dies only when the I/O returns) before giving up and saying so in the log.
_KILL_WAIT = 5.0

# The longest the executor waits on one event before re-checking the others; this bounds how late
# a cancel (python jobs) or a process exit (shell jobs) is noticed.
_POLL_MAX = 0.05

# How long to keep reading a finished job's output pipe. Normally EOF comes at once; it does not
# when a process that escaped the process group (setsid, a daemonizing service) still holds it.
_READER_JOIN = 1.0

_ERROR_MAX = 500  # characters of an exception message kept in Outcome.error
_REPR_MAX = 2000  # characters of a non-dict return value written to the log

_LOG_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
_SHELL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")

# Environment variables a shell job's parameters may not set under their plain name: they
# change what a command line means (the shell, the loader, interpreters) or who runs it, and
# run-now parameters come from operators who may not edit the command. Refused at every door
# (validators.validate_parameters) and skipped here for rows saved before that check; every
# parameter is still exported as OPSCENTER_PARAM_<NAME>. Case matters, as in the environment.
RESERVED_PARAMETER_NAMES = frozenset({
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "TMPDIR",
    "IFS", "ENV", "BASH_ENV", "CDPATH", "PS4", "SHELLOPTS", "BASHOPTS",
})
RESERVED_PARAMETER_PREFIXES = ("LD_", "PYTHON", "OPSCENTER_")


def is_reserved_parameter(name: str) -> bool:
    return name in RESERVED_PARAMETER_NAMES or name.startswith(RESERVED_PARAMETER_PREFIXES)


# --------------------------------------------------------------------------------------------
# Values exchanged with the daemon


class LogBuffer:
    """Thread-safe captured output of one task. Writers append; the daemon drains it every ~second
    and stores the chunks so the log can be read while the task still runs."""

    def __init__(self, limit_bytes: int = 1_000_000):
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._chunks: list[str] = []
        self._total = 0  # bytes kept (the marker line is not counted)
        self._dropped = 0  # bytes thrown away after the limit
        self._truncated = False
        self._at_line_start = True  # so the marker always starts on a line of its own

    def write(self, text: str) -> None:
        """Append `text`. Once `limit_bytes` (UTF-8) were written in total, keep nothing more and
        append one marker line instead, so a runaway job cannot fill the daemon's memory."""
        if not text:
            return
        # ASCII is by far the common case and its length is its byte count; skip the encode.
        size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        with self._lock:
            if self._truncated:
                self._dropped += size
                return
            room = self.limit_bytes - self._total
            if size <= room:
                self._chunks.append(text)
                self._total += size
                self._at_line_start = text[-1] == "\n"
                return
            # Keep what fits, cut on a character boundary ("ignore" drops a split character).
            head = text.encode("utf-8", "replace")[: max(room, 0)].decode("utf-8", "ignore")
            kept = len(head.encode("utf-8"))
            if head:
                self._chunks.append(head)
                self._at_line_start = head[-1] == "\n"
            self._total += kept
            self._dropped += size - kept
            self._truncated = True
            newline = "" if self._at_line_start else "\n"
            self._chunks.append(
                f"{newline}[opscenter] log truncated after {self.limit_bytes} bytes\n"
            )
            self._at_line_start = True

    def drain(self) -> str:
        """Return and clear what was written since the last drain ("" if nothing)."""
        with self._lock:
            if not self._chunks:
                return ""
            text = "".join(self._chunks)
            self._chunks.clear()
            return text

    @property
    def total_bytes(self) -> int:
        """Bytes of output kept so far (at most `limit_bytes`; the marker line not counted)."""
        with self._lock:
            return self._total

    @property
    def dropped_bytes(self) -> int:
        """Bytes of output thrown away after the limit was reached."""
        with self._lock:
            return self._dropped

    @property
    def truncated(self) -> bool:
        with self._lock:
            return self._truncated


@dataclass
class TaskRun:
    """What the daemon gives the executor (plain values, no ORM objects)."""

    task_id: int
    job_name: str
    kind: str  # "shell" | "python" | "task" (django.tasks, executors/djtasks.py)
    # shell: a command line run with /bin/sh -c; python: "pkg.mod:func" or "pkg.mod.func"
    command: str
    working_directory: str = ""  # "" = inherit
    parameters: dict = field(default_factory=dict)  # JSON values
    data: dict = field(default_factory=dict)  # job data map (stateful jobs)
    timeout: float | None = None  # seconds; None (or <= 0) = no limit
    scheduled_for: datetime | None = None
    attempt: int = 1
    cluster: str = ""
    member: str = ""
    # python jobs: "thread" (a thread of the node) or "process" (a child process of its own)
    isolation: str = "thread"
    stateful: bool = False  # python jobs in a process: the data map must come back as JSON


@dataclass
class Outcome:
    # "succeeded" | "failed" | "timed_out" | "cancelled" | "lost" (the entry gate refused it:
    # nothing was started)
    state: str
    # shell: the process's return code (negative = killed by that signal, like subprocess);
    # python: 0 ok, 1 exception, the SystemExit code; None when nothing ran to an end.
    exit_code: int | None
    error: str = ""  # short reason for the operator
    # python jobs: the data map after the run; None for shell jobs, and for a python job whose
    # thread had to be abandoned (its data map is still being changed, so no snapshot is safe).
    data: dict | None = None


class Cancel:
    """Handle the daemon keeps for a running task so it can stop it (overlap policy `replace`, node
    shutdown after the grace period, operator kill)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""

    def request(self, reason: str) -> None:
        """Ask the task to stop; wakes the executor at once. Idempotent: keeps the first reason."""
        with self._lock:
            if self._event.is_set():
                return
            self._reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason


class Entry:
    """The moment a job's own code is entered, shared with the daemon.

    Right before the job is entered, with everything else ready, the worker thread waits
    until `not_before` (time.monotonic(), optional: a fire taken a little before its due
    instant), then asks `gate` (optional), which returns "" to go on or the reason not to
    start the job at all (the daemon's fence: its member may no longer own the task). `at` is
    then set to time.monotonic() as the job is entered: a python job just before its callable
    is called, a shell job once its process is spawned.
    """

    def __init__(self, gate: Callable[[], str] | None = None,
                 not_before: float | None = None) -> None:
        self.gate = gate
        self.not_before = not_before
        self.at: float | None = None

    def refusal(self, cancel: Cancel) -> Outcome | None:
        """Wait for `not_before`, then None to enter the job, or the Outcome of not entering
        it: cancelled meanwhile (`cancel`), or refused by the gate ("lost")."""
        if self.not_before is not None:
            # A wait may return a hair early: never enter before the instant.
            early = self.not_before - time.monotonic()
            while early > 0 and not cancel._event.wait(early):
                early = self.not_before - time.monotonic()
        if cancel.requested:
            return Outcome("cancelled", None, _cancel_error(cancel))
        reason = self.gate() if self.gate is not None else ""
        return Outcome("lost", None, reason) if reason else None


@dataclass
class JobContext:
    """The single argument a python job's callable receives."""

    task_id: int
    job_name: str
    parameters: dict
    data: dict  # the job data map; mutate it (or return a dict) to leave state for the next run
    logger: logging.Logger  # writes into the task's log
    scheduled_for: datetime | None
    attempt: int
    cluster: str
    member: str
    cancelled: threading.Event  # set on timeout or cancel; long jobs should check it


# --------------------------------------------------------------------------------------------
# Entry point


def execute(
    run: TaskRun, log: LogBuffer, cancel: Cancel, *, kill_grace: float = KILL_GRACE,
    entry: Entry | None = None,
) -> Outcome:
    """Run `run` to its end, a timeout or a cancel. Never raises: any failure becomes an Outcome.

    `entry`: the daemon's gate just before the job is entered, and where the moment of entry
    is written."""
    entry = entry or Entry()
    try:
        if cancel.requested:
            # Cancelled while queued in the daemon's pool: start nothing.
            return Outcome("cancelled", None, _cancel_error(cancel))
        if run.kind == "shell":
            return _execute_shell(run, log, cancel, kill_grace, entry)
        if run.kind == "python" and run.isolation == "process":
            return _execute_isolated(run, log, cancel, kill_grace, entry)
        if run.kind == "python":
            return _execute_python(run, log, cancel, kill_grace, entry)
        # --- django.tasks: a function decorated with @task, enqueued on its backend ---
        if run.kind == "task":
            from scheduler.executors import djtasks

            return djtasks.execute(run, log, cancel, entry)
        # --- end django.tasks ---
        return Outcome("failed", None, f"unknown job kind {run.kind!r}")
    except Exception as exc:  # the daemon's contract: never raise
        # A bug here must not kill the daemon's worker thread or lose the task's end.
        log.write(f"[opscenter] executor error\n{traceback.format_exc()}")
        return Outcome("failed", None, f"executor error: {_describe(exc)}")


def abandoned_threads() -> int:
    """How many python-job threads were given up on after a timeout/cancel and are still running.

    The count goes down again when such a thread finally returns."""
    with _abandon_lock:
        return _abandoned


# --------------------------------------------------------------------------------------------
# Shell jobs


def _execute_shell(run: TaskRun, log: LogBuffer, cancel: Cancel, kill_grace: float,
                   entry: Entry) -> Outcome:
    cwd = run.working_directory or None
    if cwd is not None and not os.path.isdir(cwd):
        return Outcome("failed", None, f"working directory does not exist: {cwd}")
    env = _shell_environment(run)
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
        return Outcome("failed", None, f"could not start /bin/sh: {_describe(exc)}")
    entry.at = time.monotonic()

    stopped_by = _supervise(proc, run, log, cancel, kill_grace)
    code = proc.returncode
    if stopped_by == "timed_out":
        return Outcome("timed_out", code, f"timed out after {run.timeout:g} s")
    if stopped_by == "cancelled":
        return Outcome("cancelled", code, _cancel_error(cancel))
    if code == 0:
        return Outcome("succeeded", 0)
    return Outcome("failed", code, _exit_error(code))


def _supervise(proc: subprocess.Popen, run: TaskRun, log: LogBuffer, cancel: Cancel,
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
        stopped_by = _wait_process(proc, cancel, _deadline(run.timeout))
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
        reader.join(_READER_JOIN)
        if reader.is_alive():
            log.write(
                "[opscenter] a process outside the job's process group still holds its output "
                "open; stopped reading it\n"
            )
            stop_reading.set()
            reader.join()
        stdout.close()
    return stopped_by


def _shell_environment(run: TaskRun) -> dict[str, str]:
    env = dict(os.environ)
    plain: dict[str, str] = {}
    prefixed: dict[str, str] = {}
    for name, value in run.parameters.items():
        name = str(name)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        prefixed["OPSCENTER_PARAM_" + _NON_ALNUM.sub("_", name).upper()] = text
        if _SHELL_IDENTIFIER.fullmatch(name) and not is_reserved_parameter(name):
            plain[name] = text
    # Later updates win: a parameter may shadow an ordinary variable (never a reserved one),
    # and nothing a job definition says can spoof the OPSCENTER_* values the scheduler sets.
    env.update(plain)
    env.update(prefixed)
    env.update(
        OPSCENTER_TASK_ID=str(run.task_id),
        OPSCENTER_JOB=run.job_name,
        OPSCENTER_ATTEMPT=str(run.attempt),
        OPSCENTER_SCHEDULED_FOR=_iso_utc(run.scheduled_for),
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
    waits that start at 1 ms (a trivial command is over in a few ms) and grow to _POLL_MAX."""
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
        cancel._event.wait(wait)
        pause = min(pause * 2, _POLL_MAX)
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
        pause = min(pause * 2, _POLL_MAX)


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


def _exit_error(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------------------------
# Python jobs

_callables: dict[str, Callable[[JobContext], Any]] = {}  # dotted path -> imported callable

_abandon_lock = threading.Lock()
_abandoned = 0


class _PythonResult:
    """What the job's thread leaves for the executor; read only after `finished` is set."""

    __slots__ = ("abandoned", "error", "exit_code", "finished", "refused", "returned")

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.refused: Outcome | None = None  # why the job was not entered after all
        self.abandoned = False  # guarded by _abandon_lock
        self.exit_code: int | None = None
        self.error = ""
        self.returned: Any = None


class _LogBufferHandler(logging.Handler):
    def __init__(self, log: LogBuffer) -> None:
        super().__init__(logging.DEBUG)
        self._log = log
        self.setFormatter(_LOG_FORMATTER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.write(self.format(record) + "\n")
        except Exception:  # logging's convention for a failing handler
            self.handleError(record)


def _execute_python(run: TaskRun, log: LogBuffer, cancel: Cancel, kill_grace: float,
                    entry: Entry) -> Outcome:
    if run.working_directory:
        # The working directory is process-wide and shared by every job of the daemon.
        log.write("[opscenter] working_directory is ignored for python jobs\n")
    # Without a time limit the job runs in the caller's (pool) thread, and a cancel reaches it
    # through this same event; a thread per task would cost more than a no-op job.
    ctx = job_context(run, log, cancel._event if _no_limit(run.timeout) else threading.Event())
    result = _PythonResult()
    if _no_limit(run.timeout):
        _run_callable(run.command, ctx, log, result, entry, cancel)
        return _python_outcome(run, log, cancel, ctx, result,
                               "cancelled" if cancel.requested else None)
    # Its own thread, so that a timeout or cancel can return to the daemon even if the callable
    # never does; daemon=True so such a thread does not block the daemon's exit.
    thread = threading.Thread(
        target=_run_callable,
        args=(run.command, ctx, log, result, entry, cancel),
        name=f"opscenter-task-{run.task_id}",
        daemon=True,
    )
    thread.start()

    # The time limit counts from the planned start, not from a wait for it.
    stopped_by = _wait_thread(result.finished, cancel,
                              _deadline(run.timeout, entry.not_before))
    if stopped_by is not None:
        ctx.cancelled.set()
        if not result.finished.wait(kill_grace) and _abandon(result):
            log.write("[opscenter] python job did not stop after cancel; its thread is abandoned\n")
            error = _stop_error(stopped_by, run, cancel)
            return Outcome(stopped_by, None, error, None)
    return _python_outcome(run, log, cancel, ctx, result, stopped_by)


def job_context(run: TaskRun, log: LogBuffer | Any, cancelled: threading.Event) -> JobContext:
    """The `ctx` a python job's callable receives; its logger writes into `log` (anything with
    a write(text) method)."""
    # A Logger made directly, not through logging.getLogger(): the manager would keep every task's
    # logger for the life of the process. No parent, no propagation: it writes only to this log.
    logger = logging.Logger(f"opscenter.task.{run.task_id}", logging.DEBUG)
    logger.propagate = False
    logger.addHandler(_LogBufferHandler(log))
    return JobContext(
        task_id=run.task_id,
        job_name=run.job_name,
        # Copies: the daemon's dicts must not change under it, whatever the callable does.
        parameters=_copy_json(run.parameters),
        data=_copy_json(run.data),
        logger=logger,
        scheduled_for=run.scheduled_for,
        attempt=run.attempt,
        cluster=run.cluster,
        member=run.member,
        cancelled=cancelled,
    )


def _no_limit(timeout: float | None) -> bool:
    return timeout is None or timeout <= 0


def _python_outcome(run: TaskRun, log: LogBuffer, cancel: Cancel, ctx: JobContext,
                    result: _PythonResult, stopped_by: str | None) -> Outcome:
    if result.refused is not None:
        return result.refused
    if isinstance(result.returned, dict):
        ctx.data.update(result.returned)
    elif result.returned is not None:
        log.write(f"returned: {_shorten(repr(result.returned), _REPR_MAX)}\n")
    data = _copy_json(ctx.data)
    if stopped_by is not None:
        return Outcome(stopped_by, result.exit_code, _stop_error(stopped_by, run, cancel), data)
    if result.exit_code == 0:
        return Outcome("succeeded", 0, "", data)
    return Outcome("failed", result.exit_code, result.error, data)


def _run_callable(path: str, ctx: JobContext, log: LogBuffer, result: _PythonResult,
                  entry: Entry, cancel: Cancel) -> None:
    """The job's thread: resolve the callable, call it, record how it ended."""
    global _abandoned
    try:
        try:
            func = _resolve_callable(path)
        except Exception as exc:  # any import failure is the job's failure
            log.write(traceback.format_exc())
            result.exit_code = 1
            result.error = _shorten(f"cannot load {path!r}: {_describe(exc)}", _ERROR_MAX)
            return
        result.refused = entry.refusal(cancel)
        if result.refused is not None:
            return
        try:
            entry.at = time.monotonic()
            result.returned = func(ctx)
            result.exit_code = 0
        except SystemExit as exc:
            # Same meaning as for a process: None or 0 is success, an int is the exit code, any
            # other value is a message (printed by Python to stderr; here to the log) and code 1.
            if exc.code is None or exc.code == 0:
                result.exit_code = 0
            elif isinstance(exc.code, int):
                result.exit_code = exc.code
                result.error = f"SystemExit: {exc.code}"
            else:
                log.write(f"{exc.code}\n")
                result.exit_code = 1
                result.error = _shorten(f"SystemExit: {exc.code}", _ERROR_MAX)
        except BaseException as exc:  # whatever the job raises is its failure
            log.write(traceback.format_exc())
            result.exit_code = 1
            result.error = _shorten(_describe(exc), _ERROR_MAX)
    finally:
        # Under the lock, so the executor either sees `finished` or marks the result abandoned
        # before we look at `abandoned`: the count cannot miss a thread or count one twice.
        with _abandon_lock:
            result.finished.set()
            if result.abandoned:
                _abandoned -= 1


def _abandon(result: _PythonResult) -> bool:
    """Give up on the job's thread; False if it finished just now after all."""
    global _abandoned
    with _abandon_lock:
        if result.finished.is_set():
            return False
        result.abandoned = True
        _abandoned += 1
        return True


def _wait_thread(finished: threading.Event, cancel: Cancel, deadline: float | None) -> str | None:
    """Wait for the job's thread; return None, or "timed_out"/"cancelled" if we must stop it.

    Waits on `finished`, so a quick job costs no polling delay; the cancel handle is looked at
    every _POLL_MAX s, which is how late a cancel can be noticed."""
    while True:
        wait = _POLL_MAX
        if deadline is not None:
            wait = min(wait, max(deadline - time.monotonic(), 0))
        if finished.wait(wait):
            return None
        if cancel.requested:
            return "cancelled"
        if deadline is not None and time.monotonic() >= deadline:
            return "timed_out"


def _resolve_callable(path: str) -> Callable[[JobContext], Any]:
    """Import the callable named by "pkg.mod:func" or "pkg.mod.func" (cached by path).

    Only successes are cached: a failure is rare, and the next task of the job should see a
    module that was fixed and reloaded rather than a remembered error."""
    func = _callables.get(path)
    if func is not None:
        return func
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        obj = _get_attributes(importlib.import_module(module_name), attrs.split("."))
    else:
        obj = _import_dotted(path)
    if not callable(obj):
        raise TypeError(f"{path!r} is not callable (it is {type(obj).__name__})")
    _callables[path] = obj
    return obj


def _import_dotted(path: str) -> Any:
    """Resolve "a.b.C.meth": import the longest module prefix that exists, then get attributes."""
    parts = path.split(".")
    if len(parts) < 2 or not all(parts):  # a module and a name at least
        raise ValueError("expected 'package.module:function' or 'package.module.function'")
    not_found: ModuleNotFoundError | None = None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only "this prefix is not a module" lets us try a shorter one; a module that exists
            # but fails to import one of its own dependencies is a real error to report.
            missing = exc.name or ""
            if missing != module_name and not module_name.startswith(missing + "."):
                raise
            not_found = not_found or exc
            continue
        try:
            return _get_attributes(module, parts[split:])
        except AttributeError:
            # "No module named 'pkg.typo'" says more than "module 'pkg' has no attribute 'typo'".
            if not_found is not None:
                raise not_found from None
            raise
    raise not_found or ModuleNotFoundError(f"No module named {path!r}")


def _get_attributes(obj: Any, names: list[str]) -> Any:
    for name in names:
        obj = getattr(obj, name)
    return obj


# --------------------------------------------------------------------------------------------
# Python jobs in a process of their own (isolation "process")

# The child's first statement: the node's import path first (so the job's module imports as it
# would in a thread of the node), then scheduler/isolated.py, which sets Django up and runs it.
_CHILD_BOOT = ("import sys; sys.path[:0] = sys.argv[1:]; "
               "from scheduler.isolated import main; sys.exit(main())")
_RESULT_MAX = 64 * 1024 * 1024  # bytes of a child's result read at most (a data map as JSON)


def _execute_isolated(run: TaskRun, log: LogBuffer, cancel: Cancel,
                      kill_grace: float, entry: Entry) -> Outcome:
    """Run the callable in a child process (scheduler/isolated.py) in a session of its own, like
    a shell job: its output streams into the log through a pipe, its outcome comes back as JSON
    on another pipe, a timeout or cancel stops its group (SIGTERM sets ctx.cancelled, SIGKILL
    after the grace), and whatever ends the child (os._exit, a crash) fails only this task."""
    cwd = run.working_directory or None
    if cwd is not None and not os.path.isdir(cwd):
        return Outcome("failed", None, f"working directory does not exist: {cwd}")
    spec = {
        "task_id": run.task_id, "job_name": run.job_name, "command": run.command,
        "parameters": run.parameters, "data": run.data, "attempt": run.attempt,
        "scheduled_for": _iso_utc(run.scheduled_for), "cluster": run.cluster,
        "member": run.member, "stateful": run.stateful,
    }
    paths = [p or os.getcwd() for p in sys.path]
    refusal = entry.refusal(cancel)
    if refusal is not None:
        return refusal
    result_r, result_w = os.pipe()
    spec["result_fd"] = result_w  # pass_fds keeps the number in the child
    try:
        payload = json.dumps(spec, default=str).encode()
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_BOOT, *paths], cwd=cwd, env=dict(os.environ),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(result_w,), start_new_session=True,
        )
    except (OSError, ValueError, TypeError) as exc:
        os.close(result_r)
        return Outcome("failed", None, f"could not start the job's process: {_describe(exc)}")
    finally:
        os.close(result_w)  # the child's copy is the only one: EOF when it is gone
    # Entered when its process is spawned, like a shell job (the callable itself is reached
    # after the child has set Django up).
    entry.at = time.monotonic()

    returned = bytearray()
    collector = threading.Thread(target=_collect, args=(result_r, returned),
                                 name=f"opscenter-result-{run.task_id}", daemon=True)
    collector.start()
    try:
        stdin = cast(IO[bytes], proc.stdin)
        try:
            stdin.write(payload)  # read at once by the child; a big data map may take a moment
            stdin.close()
        except OSError:
            pass  # the child is already gone; its exit says why
        stopped_by = _supervise(proc, run, log, cancel, kill_grace)
    finally:
        collector.join(_READER_JOIN)
        if collector.is_alive():  # a grandchild holds the result pipe: give up on it
            returned.clear()
    result = _parse_result(bytes(returned))
    code = proc.returncode
    if result is None:
        # Nothing reported: os._exit, killed, or a crash of the interpreter.
        if stopped_by is not None:
            return Outcome(stopped_by, code, _stop_error(stopped_by, run, cancel))
        if code == 0:
            return Outcome("succeeded", 0, "", None)
        return Outcome("failed", code, f"the job's process ended without a result: "
                                       f"{_exit_error(code)}")
    exit_code, error, data = result
    if stopped_by is not None:
        return Outcome(stopped_by, exit_code, _stop_error(stopped_by, run, cancel), data)
    if exit_code == 0:
        return Outcome("succeeded", 0, "", data)
    return Outcome("failed", exit_code, error, data)


def _collect(fd: int, into: bytearray) -> None:
    """Read the child's result pipe to EOF (a thread: a big result must not block the child)."""
    try:
        while len(into) <= _RESULT_MAX:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            into += chunk
    finally:
        os.close(fd)


def _parse_result(raw: bytes) -> tuple[int | None, str, dict | None] | None:
    try:
        result = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(result, dict):
        return None
    code = result.get("exit_code")
    data = result.get("data")
    return (code if isinstance(code, int) else 1, str(result.get("error") or ""),
            data if isinstance(data, dict) else None)


# --------------------------------------------------------------------------------------------
# Small helpers


def _deadline(timeout: float | None, start: float | None = None) -> float | None:
    # A zero or negative timeout cannot be meant literally; treat it like None (no limit).
    if timeout is None or timeout <= 0:
        return None
    return max(time.monotonic(), start or 0.0) + timeout


def _cancel_error(cancel: Cancel) -> str:
    return f"cancelled: {cancel.reason}" if cancel.reason else "cancelled"


def _stop_error(stopped_by: str, run: TaskRun, cancel: Cancel) -> str:
    if stopped_by == "timed_out":
        return f"timed out after {run.timeout:g} s"
    return _cancel_error(cancel)


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso_utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the daemon works in UTC; a naive value is UTC
    return moment.astimezone(UTC).isoformat()


def _copy_json(value: Any) -> Any:
    """Deep copy of a JSON-like value; much faster than copy.deepcopy for the common case."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value  # immutable
    return copy.deepcopy(value)  # not JSON, but do not share it either
