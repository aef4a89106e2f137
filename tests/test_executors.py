"""Tests of scheduler.executors with real processes and threads (no mocks).

Where a test must wait for something, it polls with a deadline (`wait_until`); nothing sleeps to
synchronise. Timeouts and kill graces are kept small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import psutil
import pytest

from scheduler.executors import (
    Cancel,
    JobContext,
    LogBuffer,
    Outcome,
    TaskRun,
    abandoned_threads,
    execute,
)

MODULE = __name__  # "tests.test_executors" when collected as a package module


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def _fast_passwords():
    """Replaces the shared autouse fixture of tests/conftest.py, which needs pytest-django's
    `settings`: these tests run without Django (-p no:django), as the executor itself does."""


def shell(command: str, **fields) -> TaskRun:
    return TaskRun(task_id=7, job_name="backup", kind="shell", command=command, **fields)


def python(path: str, **fields) -> TaskRun:
    return TaskRun(task_id=8, job_name="report", kind="python", command=path, **fields)


def run(task: TaskRun, **kwargs) -> tuple[Outcome, str]:
    log = LogBuffer()
    outcome = execute(task, log, Cancel(), **kwargs)
    return outcome, log.drain()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Background:
    """execute() in a thread of its own, so the test can cancel it or read its log meanwhile."""

    def __init__(self, task: TaskRun, **kwargs) -> None:
        self.log = LogBuffer()
        self.cancel = Cancel()
        self.outcome: Outcome | None = None
        self.text = ""  # everything drained so far
        self._thread = threading.Thread(target=self._run, args=(task, kwargs), daemon=True)
        self._thread.start()

    def _run(self, task: TaskRun, kwargs: dict) -> None:
        self.outcome = execute(task, self.log, self.cancel, **kwargs)

    def drained(self) -> str:
        self.text += self.log.drain()
        return self.text

    def wait_for_output(self, needle: str) -> None:
        wait_until(lambda: needle in self.drained(), what=f"{needle!r} in the log")

    def join(self, timeout: float = 10.0) -> Outcome:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "execute() did not return in time"
        self.drained()
        assert self.outcome is not None
        return self.outcome


def is_running(pid: int) -> bool:
    """A zombie is not running: here PID 1 does not reap orphans, so dead ones may linger."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_in_group(pgid: int) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except ProcessLookupError:
            pass
    return pids


def pids_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^pid (\d+)$", text, re.MULTILINE)]


# --------------------------------------------------------------------------------------------
# Callables for python jobs (addressed as "tests.test_executors:...")


def job_ok(ctx: JobContext):
    ctx.logger.info("hello %s", ctx.parameters["who"])
    ctx.logger.debug("debug shows too")
    ctx.data["runs"] = ctx.data.get("runs", 0) + 1  # mutate the map in place ...
    ctx.data["seen"].append(ctx.attempt)
    ctx.parameters["who"] = "changed"  # ... and scribble on the parameters: must not leak out
    return {"last": "ok"}  # ... and return updates


def job_context(ctx: JobContext):
    return {
        "task_id": ctx.task_id,
        "job_name": ctx.job_name,
        "scheduled_for": ctx.scheduled_for.isoformat(),
        "attempt": ctx.attempt,
        "cluster": ctx.cluster,
        "member": ctx.member,
        "cancelled": ctx.cancelled.is_set(),
        "logger": ctx.logger.name,
        "propagate": ctx.logger.propagate,
    }


def job_raises(ctx: JobContext):
    ctx.logger.info("about to divide")
    return 1 / 0


def job_exits(ctx: JobContext):
    raise SystemExit(ctx.parameters["code"])


def job_returns_value(ctx: JobContext):
    return [1, "two"]


def job_replaces_data(ctx: JobContext):
    ctx.data = {"fresh": True}


def job_waits_for_cancel(ctx: JobContext):
    ctx.logger.info("waiting")
    ctx.data["state"] = "running"
    if not ctx.cancelled.wait(60):
        raise AssertionError("never cancelled")
    ctx.logger.info("stopping cleanly")
    ctx.data["state"] = "stopped"


stubborn_release = threading.Event()


def job_ignores_cancel(ctx: JobContext):
    ctx.logger.info("not listening")
    stubborn_release.wait(60)  # only the test can end this thread


class Jobs:
    @staticmethod
    def ping(ctx: JobContext):
        return {"pong": True}


NOT_CALLABLE = 42


# --------------------------------------------------------------------------------------------
# LogBuffer


def test_log_drain_returns_what_was_written_since_last_drain():
    log = LogBuffer()
    assert log.drain() == ""
    log.write("a")
    log.write("")
    log.write("b\n")
    assert log.drain() == "ab\n"
    assert log.drain() == ""
    log.write("c")
    assert log.drain() == "c"
    assert log.total_bytes == 4


def test_log_truncates_once_with_one_marker_line():
    log = LogBuffer(limit_bytes=10)
    log.write("12345")
    log.write("67890abc")
    log.write("more\n")
    log.write("and more\n")
    assert log.drain() == "1234567890\n[opscenter] log truncated after 10 bytes\n"
    log.write("still more")
    assert log.drain() == ""
    assert log.total_bytes == 10
    assert log.dropped_bytes == 3 + 5 + 9 + 10
    assert log.truncated


def test_log_limit_counts_utf8_bytes_and_never_splits_a_character():
    log = LogBuffer(limit_bytes=4)
    log.write("aé€")  # 1 + 2 + 3 bytes: the euro sign does not fit whole
    assert log.drain() == "aé\n[opscenter] log truncated after 4 bytes\n"
    assert log.total_bytes == 3


def test_log_is_thread_safe_and_accounts_for_every_write():
    log = LogBuffer(limit_bytes=10_000_000)
    writers, lines_each = 8, 2000
    drained: list[str] = []
    done = threading.Event()

    def write(n: int) -> None:
        for i in range(lines_each):
            log.write(f"writer {n} line {i}\n")

    def drain() -> None:  # the daemon drains while tasks write
        while not done.is_set():
            drained.append(log.drain())
        drained.append(log.drain())

    drainer = threading.Thread(target=drain)
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    drainer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    drainer.join()

    text = "".join(drained)
    expected = Counter(f"writer {n} line {i}" for n in range(writers) for i in range(lines_each))
    assert Counter(text.splitlines()) == expected
    assert log.total_bytes == len(text.encode())
    # Each writer's own lines stay in the order it wrote them.
    for n in range(writers):
        mine = [line for line in text.splitlines() if line.startswith(f"writer {n} ")]
        assert mine == [f"writer {n} line {i}" for i in range(lines_each)]


def test_log_concurrent_writers_past_the_limit_leave_exactly_one_marker():
    log = LogBuffer(limit_bytes=1000)
    threads = [
        threading.Thread(target=lambda: [log.write("x" * 7 + "\n") for _ in range(500)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = log.drain()
    assert text.count("[opscenter] log truncated") == 1
    assert text.endswith("[opscenter] log truncated after 1000 bytes\n")
    assert log.total_bytes == 1000
    assert log.total_bytes + log.dropped_bytes == 4 * 500 * 8


# --------------------------------------------------------------------------------------------
# Cancel


def test_cancel_is_idempotent_and_keeps_the_first_reason():
    cancel = Cancel()
    assert not cancel.requested
    assert cancel.reason == ""
    cancel.request("replaced by a newer run")
    cancel.request("node shutdown")
    assert cancel.requested
    assert cancel.reason == "replaced by a newer run"


# --------------------------------------------------------------------------------------------
# Shell jobs


def test_shell_success():
    outcome, text = run(shell("echo hello"))
    assert outcome == Outcome("succeeded", 0, "", None)
    assert text == "hello\n"


def test_shell_failure_reports_exit_code():
    outcome, text = run(shell("echo partial work; exit 3"))
    assert outcome == Outcome("failed", 3, "exit code 3", None)
    assert text == "partial work\n"


def test_shell_killed_by_signal_is_named():
    outcome, _ = run(shell("kill -KILL $$"))
    assert outcome.state == "failed"
    assert outcome.exit_code == -9
    assert outcome.error == "killed by signal SIGKILL"


def test_shell_parameters_and_task_values_in_environment():
    berlin = timezone(timedelta(hours=2))
    task = shell(
        "env",
        parameters={
            "target": "db one",
            "retries": 3,
            "ratio": 0.5,
            "dry_run": True,
            "verbose": False,
            "tables": ["a", "b"],
            "options": {"x": 1},
            "nothing": None,
            "max-age": "7d",  # not a shell identifier: only the OPSCENTER_PARAM_ name
        },
        scheduled_for=datetime(2026, 3, 1, 4, 30, tzinfo=berlin),
        attempt=2,
        cluster="prod",
        member="node-a",
    )
    outcome, text = run(task)
    assert outcome.state == "succeeded"
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    expected = {
        "target": "db one",
        "retries": "3",
        "ratio": "0.5",
        "dry_run": "true",
        "verbose": "false",
        "tables": '["a", "b"]',
        "options": '{"x": 1}',
        "nothing": "null",
    }
    for name, value in expected.items():
        assert env[name] == value
        assert env["OPSCENTER_PARAM_" + name.upper()] == value
    assert env["OPSCENTER_PARAM_MAX_AGE"] == "7d"
    assert "max-age" not in env
    assert env["OPSCENTER_TASK_ID"] == "7"
    assert env["OPSCENTER_JOB"] == "backup"
    assert env["OPSCENTER_ATTEMPT"] == "2"
    assert env["OPSCENTER_SCHEDULED_FOR"] == "2026-03-01T02:30:00+00:00"
    assert env["OPSCENTER_CLUSTER"] == "prod"
    assert env["OPSCENTER_MEMBER"] == "node-a"
    assert env["PATH"] == os.environ["PATH"]  # the daemon's environment is inherited


def test_shell_scheduled_for_empty_when_not_scheduled():
    outcome, text = run(shell('printf "[%s]" "$OPSCENTER_SCHEDULED_FOR"'))
    assert outcome.state == "succeeded"
    assert text == "[]"


def test_shell_parameters_cannot_spoof_scheduler_values():
    outcome, text = run(shell("echo $OPSCENTER_TASK_ID", parameters={"OPSCENTER_TASK_ID": "666"}))
    assert outcome.state == "succeeded"
    assert text == "7\n"


def test_shell_runs_in_working_directory(tmp_path):
    outcome, text = run(shell("pwd; echo made > here.txt", working_directory=str(tmp_path)))
    assert outcome.state == "succeeded"
    assert os.path.realpath(text.strip()) == os.path.realpath(tmp_path)
    assert (tmp_path / "here.txt").read_text() == "made\n"


def test_shell_missing_working_directory_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    missing = tmp_path / "no" / "such" / "dir"
    outcome, text = run(shell(f"touch {marker}", working_directory=str(missing)))
    assert outcome.state == "failed"
    assert outcome.exit_code is None
    assert outcome.error == f"working directory does not exist: {missing}"
    assert not marker.exists()
    assert text == ""


def test_shell_output_in_order_with_stderr_merged():
    outcome, text = run(shell("echo one; echo two >&2; echo three; echo four >&2"))
    assert outcome.state == "succeeded"
    assert text == "one\ntwo\nthree\nfour\n"


def test_shell_final_partial_line_is_captured():
    outcome, text = run(shell("echo first; printf 'no newline at the end'"))
    assert outcome.state == "succeeded"
    assert text == "first\nno newline at the end"


def test_shell_partial_line_shows_while_the_job_runs():
    job = Background(shell("printf 'progress 50%%'; sleep 100"))
    job.wait_for_output("progress 50%")  # visible before any newline and before the job ends
    assert job.outcome is None
    job.cancel.request("test over")
    assert job.join().state == "cancelled"


def test_shell_invalid_utf8_is_replaced():
    outcome, text = run(shell(r"printf 'bad \377 byte, euro \342\202\254\n'"))
    assert outcome.state == "succeeded"
    assert text == "bad \ufffd byte, euro €\n"


def test_shell_log_truncated_but_job_not_blocked_by_a_full_pipe():
    log = LogBuffer(limit_bytes=1000)
    outcome = execute(shell("yes 0123456789 | head -c 1000000; echo done"), log, Cancel())
    assert outcome.state == "succeeded"  # the reader kept draining the pipe past the limit
    text = log.drain()
    assert text.endswith("[opscenter] log truncated after 1000 bytes\n")
    assert text.count("[opscenter] log truncated") == 1
    assert log.total_bytes == 1000
    assert log.dropped_bytes == 1_000_000 + len("done\n") - 1000


def test_shell_timeout_kills_the_whole_process_group():
    command = "echo pid $$; sleep 100 & echo pid $!; sleep 100 & echo pid $!; sleep 100"
    outcome, text = run(shell(command, timeout=0.5), kill_grace=5)
    assert outcome.state == "timed_out"
    assert outcome.error == "timed out after 0.5 s"
    assert outcome.exit_code == -15  # SIGTERM was enough; no SIGKILL needed
    shell_pid, *children = pids_in(text)
    assert len(children) == 2
    assert [pid for pid in [shell_pid, *children] if is_running(pid)] == []
    assert running_in_group(shell_pid) == []


def test_shell_ignoring_sigterm_gets_sigkill_after_grace():
    command = "trap '' TERM; echo pid $$; sleep 100 & echo pid $!; sleep 100"
    outcome, text = run(shell(command, timeout=0.2), kill_grace=0.3)
    assert outcome.state == "timed_out"
    assert outcome.exit_code == -9
    assert "sending SIGKILL" in text
    shell_pid, child = pids_in(text)
    assert not is_running(shell_pid)
    assert not is_running(child)
    assert running_in_group(shell_pid) == []


def test_shell_background_processes_left_behind_are_terminated():
    outcome, text = run(shell("sleep 100 & echo pid $!; echo pid $$"))
    assert outcome == Outcome("succeeded", 0, "", None)  # the command's own result stands
    child, shell_pid = pids_in(text)
    assert "left processes running" in text
    assert not is_running(child)
    assert running_in_group(shell_pid) == []


def test_shell_cancel_from_another_thread_stops_the_job():
    job = Background(shell("echo pid $$; sleep 100 & echo pid $!; wait"))
    job.wait_for_output("pid")
    wait_until(lambda: len(pids_in(job.drained())) == 2, what="both pids")
    job.cancel.request("operator kill")
    outcome = job.join(timeout=5)
    assert outcome.state == "cancelled"
    assert outcome.error == "cancelled: operator kill"
    assert job.cancel.reason == "operator kill"
    assert [pid for pid in pids_in(job.text) if is_running(pid)] == []


def test_cancel_before_start_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    cancel = Cancel()
    cancel.request("replaced")
    outcome = execute(shell(f"touch {marker}"), LogBuffer(), cancel)
    assert outcome == Outcome("cancelled", None, "cancelled: replaced", None)
    assert not marker.exists()


def test_unknown_kind_fails_without_raising():
    task = TaskRun(task_id=1, job_name="x", kind="celery", command="whatever")
    assert execute(task, LogBuffer(), Cancel()) == Outcome(
        "failed", None, "unknown job kind 'celery'"
    )


# --------------------------------------------------------------------------------------------
# Python jobs


def test_python_success_logs_and_merges_data_without_touching_inputs():
    parameters = {"who": "world"}
    data = {"runs": 4, "seen": [1]}
    outcome, text = run(python(f"{MODULE}:job_ok", parameters=parameters, data=data, attempt=3))
    assert outcome == Outcome("succeeded", 0, "", {"runs": 5, "seen": [1, 3], "last": "ok"})
    timestamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{timestamp} INFO hello world$", text, re.MULTILINE)
    assert " DEBUG debug shows too" in text
    assert parameters == {"who": "world"}
    assert data == {"runs": 4, "seen": [1]}  # nested list not shared either


def test_python_dotted_path_forms():
    for path in (f"{MODULE}.job_ok", f"{MODULE}:Jobs.ping", f"{MODULE}.Jobs.ping"):
        outcome, _ = run(python(path, parameters={"who": "x"}, data={"seen": []}))
        assert outcome.state == "succeeded", (path, outcome)


def test_python_context_carries_task_values():
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    task = python(
        f"{MODULE}:job_context", scheduled_for=when, attempt=2, cluster="prod", member="n1"
    )
    outcome, _ = run(task)
    assert outcome.data == {
        "task_id": 8,
        "job_name": "report",
        "scheduled_for": when.isoformat(),
        "attempt": 2,
        "cluster": "prod",
        "member": "n1",
        "cancelled": False,
        "logger": "opscenter.task.8",
        "propagate": False,
    }
    # Made directly, not registered in logging's manager (which would keep it forever).
    assert "opscenter.task.8" not in logging.root.manager.loggerDict


def test_python_exception_fails_with_traceback_in_log():
    outcome, text = run(python(f"{MODULE}:job_raises", data={"kept": 1}))
    assert outcome == Outcome("failed", 1, "ZeroDivisionError: division by zero", {"kept": 1})
    assert "INFO about to divide" in text
    assert "Traceback (most recent call last):" in text
    assert "in job_raises" in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")


@pytest.mark.parametrize(
    ("code", "state", "exit_code", "error"),
    [
        (None, "succeeded", 0, ""),
        (0, "succeeded", 0, ""),
        (3, "failed", 3, "SystemExit: 3"),
        ("config missing", "failed", 1, "SystemExit: config missing"),
    ],
)
def test_python_system_exit(code, state, exit_code, error):
    outcome, text = run(python(f"{MODULE}:job_exits", parameters={"code": code}))
    assert (outcome.state, outcome.exit_code, outcome.error) == (state, exit_code, error)
    if isinstance(code, str):
        assert text == "config missing\n"


def test_python_non_dict_return_value_is_logged():
    outcome, text = run(python(f"{MODULE}:job_returns_value", data={"a": 1}))
    assert outcome == Outcome("succeeded", 0, "", {"a": 1})
    assert text == "returned: [1, 'two']\n"


def test_python_may_replace_the_data_map():
    outcome, _ = run(python(f"{MODULE}:job_replaces_data", data={"old": 1}))
    assert outcome.data == {"fresh": True}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.no_such_module:func", "No module named 'tests.no_such_module'"),
        ("tests.no_such_module.func", "No module named 'tests.no_such_module'"),
        ("no_such_package_xyz.mod.func", "No module named 'no_such_package_xyz'"),
        (f"{MODULE}:no_such_func", "has no attribute 'no_such_func'"),
        (f"{MODULE}.no_such_func", "has no attribute 'no_such_func'"),
        (f"{MODULE}:NOT_CALLABLE", "is not callable (it is int)"),
        ("nodots", "expected 'package.module:function'"),
    ],
)
def test_python_bad_path_fails_clearly(path, message):
    outcome, text = run(python(path, data={"kept": True}))
    assert outcome.state == "failed"
    assert outcome.exit_code == 1
    assert outcome.error.startswith(f"cannot load {path!r}: ")
    assert message in outcome.error
    assert outcome.data == {"kept": True}
    assert "Traceback (most recent call last):" in text


def test_python_module_failing_on_its_own_import_is_not_mistaken_for_a_bad_path(
    tmp_path, monkeypatch
):
    (tmp_path / "opscenter_broken_job.py").write_text(
        "import opscenter_missing_dependency\n\ndef run(ctx):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    outcome, text = run(python("opscenter_broken_job.run"))
    assert outcome.state == "failed"
    assert "No module named 'opscenter_missing_dependency'" in outcome.error
    assert "opscenter_broken_job.py" in text  # the traceback points into the module
    sys.modules.pop("opscenter_broken_job", None)


def test_python_cancel_from_another_thread_is_seen_by_the_job():
    before = abandoned_threads()
    job = Background(python(f"{MODULE}:job_waits_for_cancel"))
    job.wait_for_output("waiting")
    job.cancel.request("node shutdown")
    outcome = job.join(timeout=5)
    assert outcome == Outcome("cancelled", 0, "cancelled: node shutdown", {"state": "stopped"})
    assert "INFO stopping cleanly" in job.text
    assert abandoned_threads() == before


def test_python_timeout_of_a_job_that_honours_cancelled():
    outcome, text = run(python(f"{MODULE}:job_waits_for_cancel", timeout=0.2), kill_grace=5)
    assert outcome == Outcome("timed_out", 0, "timed out after 0.2 s", {"state": "stopped"})
    assert "INFO stopping cleanly" in text
    assert "abandoned" not in text


def test_python_timeout_of_a_job_that_ignores_cancelled_abandons_its_thread():
    stubborn_release.clear()
    before = abandoned_threads()
    try:
        outcome, text = run(python(f"{MODULE}:job_ignores_cancel", timeout=0.2), kill_grace=0.2)
        assert outcome == Outcome("timed_out", None, "timed out after 0.2 s", None)
        assert "INFO not listening" in text
        assert "[opscenter] python job did not stop after cancel; its thread is abandoned" in text
        assert abandoned_threads() == before + 1
    finally:
        stubborn_release.set()
    # The count is of threads still running: it falls back once the thread finally returns.
    wait_until(lambda: abandoned_threads() == before, what="the abandoned thread to end")


def test_shell_parameters_cannot_replace_reserved_environment_variables(tmp_path):
    """A row saved before the doors refused these names still cannot touch the node's PATH,
    loader or shell: the plain name is skipped, the OPSCENTER_PARAM_ one is exported."""
    evil = tmp_path / "bin"
    evil.mkdir()
    (evil / "env").write_text("#!/bin/sh\necho hijacked\n")
    (evil / "env").chmod(0o755)
    parameters = {"PATH": str(evil), "LD_PRELOAD": "/nonexistent/evil.so", "IFS": "x",
                  "PYTHONPATH": str(evil), "OPSCENTER_TASK_ID": "666", "home": "kept"}
    outcome, text = run(shell("env", parameters=parameters))
    assert outcome.state == "succeeded" and "hijacked" not in text and "ld.so" not in text
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert env["PATH"] == os.environ["PATH"]
    assert env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD")
    assert env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    assert env["OPSCENTER_TASK_ID"] == "7"
    assert env["OPSCENTER_PARAM_PATH"] == str(evil)
    assert env["OPSCENTER_PARAM_LD_PRELOAD"] == "/nonexistent/evil.so"
    assert env["home"] == "kept"  # names are case-sensitive: only the exact ones are reserved
