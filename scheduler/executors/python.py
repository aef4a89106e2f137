"""Python jobs: a callable named by a dotted path, called with one `JobContext` (executor node;
a Celery worker runs them with this same code).

Isolation "thread" (default): the callable runs in a thread of the node. A thread cannot be
killed, so on a timeout or cancel `ctx.cancelled` is set and a job that ignores it is abandoned
(and counted) rather than waited for forever. Isolation "process": it runs in a child process of
its own (scheduler/isolated.py), stopped like a shell job, so a crash or os._exit fails only the
task.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any, cast

from scheduler.executors import base, shell
from scheduler.executors.base import (
    Cancel,
    Entry,
    Executor,
    JobContext,
    LogBuffer,
    Outcome,
    Support,
    TaskRun,
)

_LOG_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(message)s")

_callables: dict[str, Callable[[JobContext], Any]] = {}  # dotted path -> imported callable

_abandon_lock = threading.Lock()
_abandoned = 0


class PythonResult:
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


def _execute_thread(run: TaskRun, log: LogBuffer, cancel: Cancel, kill_grace: float,
                    entry: Entry) -> Outcome:
    if run.working_directory:
        # The working directory is process-wide and shared by every job of the daemon.
        log.write("[opscenter] working_directory is ignored for python jobs\n")
    # Without a time limit the job runs in the caller's (pool) thread, and a cancel reaches it
    # through this same event; a thread per task would cost more than a no-op job.
    ctx = job_context(run, log, cancel.event if base.no_limit(run.timeout) else threading.Event())
    result = PythonResult()
    if base.no_limit(run.timeout):
        run_callable(run.command, ctx, log, result, entry, cancel)
        return _python_outcome(run, log, cancel, ctx, result,
                               "cancelled" if cancel.requested else None)
    # Its own thread, so that a timeout or cancel can return to the daemon even if the callable
    # never does; daemon=True so such a thread does not block the daemon's exit.
    thread = threading.Thread(
        target=run_callable,
        args=(run.command, ctx, log, result, entry, cancel),
        name=f"opscenter-task-{run.task_id}",
        daemon=True,
    )
    thread.start()

    # The time limit counts from the planned start, not from a wait for it.
    stopped_by = _wait_thread(result.finished, cancel,
                              base.deadline_of(run.timeout, entry.not_before))
    if stopped_by is not None:
        ctx.cancelled.set()
        if not result.finished.wait(kill_grace) and _abandon(result):
            log.write("[opscenter] python job did not stop after cancel; its thread is abandoned\n")
            error = base.stop_error(stopped_by, run, cancel)
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
        parameters=base.copy_json(run.parameters),
        data=base.copy_json(run.data),
        logger=logger,
        scheduled_for=run.scheduled_for,
        attempt=run.attempt,
        cluster=run.cluster,
        member=run.member,
        cancelled=cancelled,
    )


def _python_outcome(run: TaskRun, log: LogBuffer, cancel: Cancel, ctx: JobContext,
                    result: PythonResult, stopped_by: str | None) -> Outcome:
    if result.refused is not None:
        return result.refused
    if isinstance(result.returned, dict):
        ctx.data.update(result.returned)
    elif result.returned is not None:
        log.write(f"returned: {base.shorten(repr(result.returned), base.REPR_MAX)}\n")
    data = base.copy_json(ctx.data)
    if stopped_by is not None:
        return Outcome(stopped_by, result.exit_code, base.stop_error(stopped_by, run, cancel), data)
    if result.exit_code == 0:
        return Outcome("succeeded", 0, "", data)
    return Outcome("failed", result.exit_code, result.error, data)


def run_callable(path: str, ctx: JobContext, log: LogBuffer, result: PythonResult,
                  entry: Entry, cancel: Cancel) -> None:
    """The job's thread: resolve the callable, call it, record how it ended."""
    global _abandoned
    try:
        try:
            func = _resolve_callable(path)
        except Exception as exc:  # any import failure is the job's failure
            log.write(traceback.format_exc())
            result.exit_code = 1
            result.error = base.shorten(f"cannot load {path!r}: {base.describe(exc)}",
                                        base.ERROR_MAX)
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
                result.error = base.shorten(f"SystemExit: {exc.code}", base.ERROR_MAX)
        except BaseException as exc:  # whatever the job raises is its failure
            log.write(traceback.format_exc())
            result.exit_code = 1
            result.error = base.shorten(base.describe(exc), base.ERROR_MAX)
    finally:
        # Under the lock, so the executor either sees `finished` or marks the result abandoned
        # before we look at `abandoned`: the count cannot miss a thread or count one twice.
        with _abandon_lock:
            result.finished.set()
            if result.abandoned:
                _abandoned -= 1


def _abandon(result: PythonResult) -> bool:
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
    every base.POLL_MAX s, which is how late a cancel can be noticed."""
    while True:
        wait = base.POLL_MAX
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
        obj = get_attributes(importlib.import_module(module_name), attrs.split("."))
    else:
        obj = import_dotted(path)
    if not callable(obj):
        raise TypeError(f"{path!r} is not callable (it is {type(obj).__name__})")
    _callables[path] = obj
    return obj


def import_dotted(path: str) -> Any:
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
            return get_attributes(module, parts[split:])
        except AttributeError:
            # "No module named 'pkg.typo'" says more than "module 'pkg' has no attribute 'typo'".
            if not_found is not None:
                raise not_found from None
            raise
    raise not_found or ModuleNotFoundError(f"No module named {path!r}")


def get_attributes(obj: Any, names: list[str]) -> Any:
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
        "scheduled_for": base.iso_utc(run.scheduled_for), "cluster": run.cluster,
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
        return Outcome("failed", None, f"could not start the job's process: {base.describe(exc)}")
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
        stopped_by = shell.supervise(proc, run, log, cancel, kill_grace)
    finally:
        collector.join(shell.READER_JOIN)
        if collector.is_alive():  # a grandchild holds the result pipe: give up on it
            returned.clear()
    result = _parse_result(bytes(returned))
    code = proc.returncode
    if result is None:
        # Nothing reported: os._exit, killed, or a crash of the interpreter.
        if stopped_by is not None:
            return Outcome(stopped_by, code, base.stop_error(stopped_by, run, cancel))
        if code == 0:
            return Outcome("succeeded", 0, "", None)
        return Outcome("failed", code, f"the job's process ended without a result: "
                                       f"{shell.exit_error(code)}")
    exit_code, error, data = result
    if stopped_by is not None:
        return Outcome(stopped_by, exit_code, base.stop_error(stopped_by, run, cancel), data)
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
# The entry point and the declaration


def execute(run: TaskRun, log: LogBuffer, cancel: Cancel, entry: Entry,
            kill_grace: float) -> Outcome:
    if run.isolation == "process":
        return _execute_isolated(run, log, cancel, kill_grace, entry)
    return _execute_thread(run, log, cancel, kill_grace, entry)


def abandoned_threads() -> int:
    """How many python-job threads were given up on after a timeout/cancel and are still running.

    The count goes down again when such a thread finally returns."""
    with _abandon_lock:
        return _abandoned


EXECUTOR = Executor(
    Support(executor="node", kind="python",
            runs_on="the node, in a thread of it or (isolation process) a process of its own",
            isolations=("thread", "process"), time_limit=True, cancel=True, live_log=True,
            data_map=True,
            note="a timeout or cancel sets ctx.cancelled; a thread that ignores it is "
                 "abandoned 5 s later, a process is sent SIGTERM, then SIGKILL"),
    execute,
)
