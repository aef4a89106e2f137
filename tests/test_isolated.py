"""Python jobs with isolation "process": the callable runs in a child process of its own.

Executor-level tests (real child processes, no database) and one real node process."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime

import psutil
import pytest

from scheduler.executors import Cancel, LogBuffer, Outcome, TaskRun, execute

JOBS = "tests.jobs"


@pytest.fixture(autouse=True)
def _fast_passwords():
    """Replaces the shared autouse fixture (it needs pytest-django's `settings`): the executor
    tests run without a database."""


def isolated(name: str, **fields) -> TaskRun:
    return TaskRun(task_id=9, job_name="iso", kind="python", command=f"{JOBS}:{name}",
                   isolation="process", **fields)


def run(task: TaskRun, **kwargs) -> tuple[Outcome, str]:
    log = LogBuffer()
    outcome = execute(task, log, Cancel(), **kwargs)
    return outcome, log.drain()


class Background:
    def __init__(self, task: TaskRun, **kwargs) -> None:
        self.log, self.cancel = LogBuffer(), Cancel()
        self.outcome: Outcome | None = None
        self.text = ""
        self._thread = threading.Thread(
            target=lambda: setattr(self, "outcome", execute(task, self.log, self.cancel,
                                                            **kwargs)), daemon=True)
        self._thread.start()

    def wait_for_output(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert time.monotonic() < deadline, f"{needle!r} not in the log: {self.text!r}"
            self.text += self.log.drain()
            time.sleep(0.01)

    def join(self, timeout: float = 20.0) -> Outcome:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "execute() did not return in time"
        self.text += self.log.drain()
        assert self.outcome is not None
        return self.outcome


def test_success_returns_the_data_map_and_logs_what_the_job_said():
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    outcome, text = run(isolated("remember", parameters={"word": "hi"}, data={"runs": 2},
                                 scheduled_for=when, attempt=3, cluster="c", member="m"))
    assert outcome == Outcome("succeeded", 0, "", {
        "runs": 3, "seen": "hi", "scheduled_for": "2026-03-01T12:00:00+00:00"})
    assert "INFO task 9 attempt 3 of iso on c/m" in text
    assert "printed\n" in text


def test_an_exception_fails_the_task_with_its_message_and_traceback():
    outcome, text = run(isolated("fail"))
    assert outcome.state == "failed" and outcome.exit_code == 1
    assert outcome.error == "RuntimeError: broken on purpose"
    assert "Traceback" in text and "tests/jobs.py" in text


def test_sys_exit_gives_its_code():
    outcome, _ = run(isolated("exit_with", parameters={"code": 4}))
    assert (outcome.state, outcome.exit_code, outcome.error) == ("failed", 4, "SystemExit: 4")


def test_os_exit_fails_only_the_task_with_its_exit_code():
    outcome, text = run(isolated("die", parameters={"code": 3}))
    assert outcome == Outcome("failed", 3, "the job's process ended without a result: exit code 3")
    assert "about to end this process" in text


def test_a_callable_that_cannot_be_imported_fails_with_that_message():
    outcome, _ = run(isolated("no_such_function"))
    assert outcome.state == "failed" and outcome.exit_code == 1
    assert outcome.error.startswith("cannot load 'tests.jobs:no_such_function'")
    outcome, _ = run(TaskRun(task_id=1, job_name="x", kind="python", isolation="process",
                             command="opscenter_no_such_module.job"))
    assert "No module named 'opscenter_no_such_module'" in outcome.error


def test_a_stateful_job_leaving_a_data_map_that_is_not_json_fails():
    outcome, _ = run(isolated("leave_a_set", stateful=True))
    assert outcome.state == "failed" and outcome.data is None
    assert "the data map the run left is not JSON data" in outcome.error
    outcome, _ = run(isolated("leave_a_set"))
    assert outcome.state == "succeeded" and outcome.data is None  # not kept anyway


def test_the_log_streams_while_the_job_runs(tmp_path):
    go = tmp_path / "go"
    job = Background(isolated("slow_lines", parameters={"go": str(go)}))
    job.wait_for_output("first line")
    assert "second line" not in job.text
    go.touch()
    assert job.join().state == "succeeded"
    assert "second line" in job.text


def test_cancel_sets_ctx_cancelled_in_the_child():
    job = Background(isolated("wait_for_cancel"))
    job.wait_for_output("waiting")
    job.cancel.request("operator")
    outcome = job.join()
    assert outcome == Outcome("cancelled", 0, "cancelled: operator", {"state": "stopped"})
    assert "cancelled, stopping" in job.text


def test_timeout_stops_a_job_that_ignores_sigterm_with_sigkill_after_the_grace():
    # The timeout leaves the child time to set Django up and say so on a loaded machine
    # (0.5 s was seen to end it before its first line).
    job = Background(isolated("ignore_cancel", timeout=4.5), kill_grace=0.3)
    job.wait_for_output("ignoring")
    child = [p for p in psutil.Process().children() if "scheduler.isolated" in " ".join(
        p.cmdline())]
    assert len(child) == 1
    outcome = job.join()
    assert outcome.state == "timed_out" and outcome.exit_code == -signal.SIGKILL
    assert outcome.error == "timed out after 4.5 s"
    assert "sending SIGKILL" in job.text
    assert not child[0].is_running() or child[0].status() == psutil.STATUS_ZOMBIE


def test_the_child_carries_the_node_token(monkeypatch):
    from scheduler.reaper import TOKEN_VAR

    monkeypatch.setenv(TOKEN_VAR, "tok-123")
    job = Background(isolated("wait_for_cancel"))
    job.wait_for_output("waiting")
    child = [p for p in psutil.Process().children() if "scheduler.isolated" in " ".join(
        p.cmdline())]
    assert child[0].environ().get(TOKEN_VAR) == "tok-123"
    assert os.getsid(child[0].pid) == child[0].pid  # a session of its own
    job.cancel.request("done")
    job.join()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_an_isolated_job_calling_os_exit_leaves_its_node_running(cluster, start_node):
    from scheduler.models import Job, Task
    from tests.conftest import add_job, wait_for

    poison = add_job(cluster, "poison", f"{JOBS}:die", isolation="process",
                     parameters={"code": 3})
    orm = add_job(cluster, "orm", f"{JOBS}:count_orm_jobs", isolation="process", stateful=True)
    node = start_node("--cluster", "test", "--node", "n1", "--heartbeat-interval", "0.2",
                      "--dead-after", "1.5")
    task = poison.run_now(actor="tester")
    done = wait_for(lambda: Task.objects.filter(pk=task.pk, finished_at__isnull=False).first(),
                    timeout=30, message="the poison task to end")
    assert (done.state, done.exit_code) == ("failed", 3), done.error
    assert "about to end this process" in done.log_text()
    # The node lives on and runs the next job, which uses the ORM in its own process.
    second = orm.run_now(actor="tester")
    done = wait_for(lambda: Task.objects.filter(pk=second.pk, finished_at__isnull=False).first(),
                    timeout=30, message="the ORM job to end")
    assert done.state == "succeeded", (done.error, done.log_text())
    assert Job.objects.get(pk=orm.pk).data_map == {"jobs": 2}
    assert node.proc.poll() is None, node.output()
