"""What the executors share: the values exchanged with the node daemon, an executor's
declaration (`Support`), and small helpers. Django-free, like shell.py and python.py.

The node daemon hands an executor plain values (`TaskRun`), drains the task's output from a
`LogBuffer` while it runs, may stop it through a `Cancel`, gates the moment the job is entered
through an `Entry`, and gets an `Outcome` back; it does every database write itself.

Work that runs elsewhere (a Celery worker, a django.tasks backend's worker) holds no pool
thread of the node: the runner only passes the entry gate, hands the work over and returns
Outcome SENT; the executor's `Away` then tells the node's loop how to follow all of the
member's tasks handed to it, in one look every `Away.poll` seconds (node.step_follow_away).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Seconds between SIGTERM and SIGKILL for shell jobs, and how long a cancelled python job gets to
# return before its thread is abandoned.
KILL_GRACE = 5.0

# The longest the executor waits on one event before re-checking the others; this bounds how late
# a cancel (python jobs) or a process exit (shell jobs) is noticed.
POLL_MAX = 0.05

ERROR_MAX = 500  # characters of an exception message kept in Outcome.error
REPR_MAX = 2000  # characters of a non-dict return value written to the log


# Environment variables a shell job's parameters may not set under their plain name: they
# change what a command line means (the shell, the loader, interpreters) or who runs it, and
# run-now parameters come from operators who may not edit the command. Refused at every door
# (validators.validate_parameters) and skipped here for rows saved before that check; every
# parameter is still exported as OPSCENTER_PARAM_<NAME>. Case matters, as in the environment.
RESERVED_PARAMETER_NAMES = frozenset({
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "TMPDIR",
    "IFS", "ENV", "BASH_ENV", "CDPATH", "PS4", "SHELLOPTS", "BASHOPTS",
    # the C library: code it loads, how it resolves names
    "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
    # other interpreters a command line may start: code they load before the script's
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "NODE_PATH",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
})
RESERVED_PARAMETER_PREFIXES = ("LD_", "PYTHON", "OPSCENTER_", "MALLOC_", "BASH_FUNC_")


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
    # Which executor runs it (Job.executor; see registry.py). The rest is for executors that
    # hand the work to another process (celery): never sent along, the worker runs it "node".
    executor: str = "node"
    queue: str = ""  # Job.celery_queue
    cluster_id: int = 0
    member_id: int = 0


# The outcome of a runner that handed the work away (an executor with an `Away`): the task
# stays running on its node but holds no pool thread; the node's loop follows it.
SENT = "sent"
# The outcome of a run that someone else ended and recorded (a Celery worker, a recovery, an
# operator): the node forgets it without a write.
RECORDED = "recorded"


@dataclass
class Outcome:
    # "succeeded" | "failed" | "timed_out" | "cancelled" | "lost" (the entry gate refused it:
    # nothing was started); SENT and RECORDED above, for work that runs elsewhere.
    state: str
    # shell: the process's return code (negative = killed by that signal, like subprocess);
    # python: 0 ok, 1 exception, the SystemExit code; None when nothing ran to an end.
    exit_code: int | None
    error: str = ""  # short reason for the operator
    # python jobs: the data map after the run; None for shell jobs, and for a python job whose
    # thread had to be abandoned (its data map is still being changed, so no snapshot is safe).
    data: dict | None = None
    # SENT: what the executor's follow finds the work by (django.tasks: the enqueued result).
    handle: Any = None


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

    @property
    def event(self) -> threading.Event:
        """Set once a stop is requested: wait on it, or hand it to a job (`ctx.cancelled`)."""
        return self._event


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
            while early > 0 and not cancel.event.wait(early):
                early = self.not_before - time.monotonic()
        if cancel.requested:
            return Outcome("cancelled", None, cancel_error(cancel))
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
# What an executor declares


@dataclass(frozen=True)
class Support:
    """What one executor does with one job kind: what an operator needs to know before choosing
    it, and what every door checks a job against (registry.refusals)."""

    executor: str  # Job.executor: "node" | "celery"
    kind: str  # Job.kind: "shell" | "python" | "task"
    runs_on: str  # where the work runs, in the operator's words
    # The isolations a job may choose; () = none (the field stays at its default, "thread").
    isolations: tuple[str, ...]
    time_limit: bool  # a timeout stops the work (False: the task ends, the work may go on)
    cancel: bool  # a cancel (operator, overlap `replace`, node stop) stops the work
    live_log: bool  # the job's output reaches the task log while it runs
    data_map: bool  # a run returns the job's data map, so the job may be stateful
    needs: str = ""  # what must be configured and running beside the nodes
    note: str = ""


# The runner of one (executor, kind): runs the task to its end (or hands it over) and never
# raises. Arguments: the run, its log, its cancel handle, its entry gate, the kill grace.
Runner = Callable[["TaskRun", "LogBuffer", "Cancel", "Entry", float], "Outcome"]


@dataclass
class Sent:
    """A task whose runner handed the work away (outcome SENT), as its executor's follow sees
    it. The node makes it once its pool thread is free again."""

    run: TaskRun
    log: LogBuffer  # the follow may write to it (drained with the task's log as usual)
    cancel: Cancel
    since: float  # time.monotonic() when the node's loop took the task over
    handle: Any = None  # the runner's Outcome.handle; the follow may replace it


@dataclass(frozen=True)
class Followed:
    task_id: int
    outcome: Outcome | None  # None: still away
    started_at: datetime | None = None  # when the work started elsewhere, once known


# One look at every task of a member (its id) handed to this executor: task id -> Sent. Returns
# what it found for each; raises only what the node treats as database weather.
Follow = Callable[[int, dict[int, Sent]], list[Followed]]


def let_go(sent: Sent) -> Outcome:
    """A task away that is cancelled (operator, overlap `replace`, the node's stop) ends at
    once, without a look: the work elsewhere learns it its own way, or not at all."""
    return Outcome("cancelled", None, cancel_error(sent.cancel))


@dataclass(frozen=True)
class Away:
    """How the node's loop follows the tasks an executor's runner handed away (outcome SENT):
    `follow` for all of them at once, every `poll` seconds (node.step_follow_away); a cancel
    ends one at once with `cancelled` (which may say in its log what becomes of the work)."""

    follow: Follow
    poll: float
    cancelled: Callable[[Sent], Outcome] = let_go


@dataclass(frozen=True)
class Executor:
    support: Support
    run: Runner
    away: Away | None = None  # its runner hands the work away: how the node follows it


# --------------------------------------------------------------------------------------------
# Small helpers


# Ids in one `IN (...)` of a follow's look: far below SQLite's 32,766 and PostgreSQL's 65,535
# parameters, whatever number of tasks a node has in flight.
FOLLOW_CHUNK = 5000


def chunked(items: list, size: int = FOLLOW_CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def no_limit(timeout: float | None) -> bool:
    return timeout is None or timeout <= 0


def deadline_of(timeout: float | None, start: float | None = None) -> float | None:
    # A zero or negative timeout cannot be meant literally; treat it like None (no limit).
    if timeout is None or timeout <= 0:
        return None
    return max(time.monotonic(), start or 0.0) + timeout


def cancel_error(cancel: Cancel) -> str:
    return f"cancelled: {cancel.reason}" if cancel.reason else "cancelled"


def stop_error(stopped_by: str, run: TaskRun, cancel: Cancel) -> str:
    if stopped_by == "timed_out":
        return f"timed out after {run.timeout:g} s"
    return cancel_error(cancel)


def describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def iso_utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the daemon works in UTC; a naive value is UTC
    return moment.astimezone(UTC).isoformat()


def copy_json(value: Any) -> Any:
    """Deep copy of a JSON-like value; much faster than copy.deepcopy for the common case."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value  # immutable
    return copy.deepcopy(value)  # not JSON, but do not share it either
