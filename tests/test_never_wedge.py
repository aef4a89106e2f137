"""A node never wedges on what its jobs leave behind.

NUL bytes and lone surrogates (which PostgreSQL's text and jsonb, or UTF-8 itself, cannot
hold) are stored readably; a record the database still refuses is written alone, or in a
minimal form, or dropped, so one bad record never stops a batch; retry backoff has a cap.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from scheduler import text, timing
from scheduler.clock import db_now
from scheduler.models import Member, Task, TaskLog
from tests.conftest import add_interval, add_job, is_postgres, wait_for
from tests.test_node import drive, make_node

pytestmark = pytest.mark.django_db(transaction=True)

R = "\ufffd"  # what a NUL or a lone surrogate becomes
NUL_SHELL = "printf 'a\\0b\\n'"
UNSTORABLE = "a NUL \x00 and a lone surrogate \udcff"

# Python job callables (dotted paths tests.test_never_wedge:...), also run by node processes.


def raise_unstorable(ctx):
    ctx.logger.info("logged %s", UNSTORABLE)
    raise RuntimeError(UNSTORABLE)


def leave_unstorable_data(ctx):
    ctx.data["key\x00"] = "value\x00"
    ctx.data["nested"] = {"surrogate\udcff": ["\x00", "\udcff", 1]}


# In-process tests hold these jobs at gates, so that their results meet in one batch.
GATES: dict[str, threading.Event] = {}


def gated(ctx):
    ctx.logger.info("first")
    GATES["second"].wait(30)
    ctx.logger.info("second")
    GATES["end"].wait(30)
    ctx.logger.info("last")
    if ctx.parameters.get("unstorable"):
        raise RuntimeError(UNSTORABLE)


def fail(ctx):
    raise RuntimeError(f"failing on attempt {ctx.attempt}")


@pytest.fixture
def node(cluster):
    n = make_node()
    yield n
    for gate in GATES.values():
        gate.set()
    n.stopping = True
    n.shutdown()


@pytest.fixture
def gates():
    GATES.clear()
    GATES.update(second=threading.Event(), end=threading.Event())
    return GATES


def finished(task):
    return lambda: Task.objects.filter(pk=task.pk, finished_at__isnull=False).exists()


def log_of(task) -> str:
    return "".join(TaskLog.objects.filter(task_id=task.pk).values_list("text", flat=True))


# ---------------------------------------------------------------- the pure helpers


def test_storable_text_replaces_nul_and_lone_surrogates_and_keeps_the_rest():
    clean = "plain ASCII\n"
    assert text.storable_text(clean) is clean
    assert text.storable_text("a\x00b") == f"a{R}b"
    assert text.storable_text("é \udcff 😀 \x00") == f"é {R} 😀 {R}"
    assert text.storable_text("\ud83d\ude00") == R + R  # a pair in a str is two lone halves
    text.storable_text(text.storable_text("\udcff")).encode("utf-8")


def test_storable_data_cleans_keys_and_strings_at_any_depth():
    data = {"k\x00": ["v\udcff", {"\x00": 1.5}], "ok": True, "n": None}
    assert text.storable_data(data) == {f"k{R}": [f"v{R}", {R: 1.5}], "ok": True, "n": None}
    clean = {"a": [1, "b"]}
    assert text.storable_data(clean) == clean


def test_retry_delay_is_capped_without_overflow():
    assert timing.retry_delay(10.0, 1) == 10.0
    assert timing.retry_delay(10.0, 3) == 40.0
    assert timing.retry_delay(0.0, 5000) == 0.0
    for attempt in (18, 1_025, 1_100, 2**31 - 1):
        assert timing.retry_delay(10.0, attempt) == timing.RETRY_BACKOFF_CAP
    assert timing.retry_delay(86400.0, 2**31 - 1) == timing.RETRY_BACKOFF_CAP


# ---------------------------------------------------------------- a node in this process


def test_nul_bytes_and_lone_surrogates_are_stored_readably(node, cluster):
    healthy = add_job(cluster, "healthy", command="tests.test_node:noop")
    add_interval(healthy, 1)
    shell = add_job(cluster, "nul-shell", kind="shell", command=NUL_SHELL)
    raising = add_job(cluster, "nul-raise", command="tests.test_never_wedge:raise_unstorable")
    data = add_job(cluster, "nul-data", command="tests.test_never_wedge:leave_unstorable_data",
                   stateful=True, data_map={"runs": 1})
    tasks = [job.run_now() for job in (shell, raising, data)]
    drive(node, lambda: all(finished(t)() for t in tasks), message="the three recorded")

    shell_task, raised, left_data = (Task.objects.get(pk=t.pk) for t in tasks)
    assert (shell_task.state, shell_task.exit_code) == ("succeeded", 0)
    assert log_of(shell_task) == f"a{R}b\n"
    assert raised.state == "failed"
    assert raised.error == f"RuntimeError: a NUL {R} and a lone surrogate {R}"
    assert f"logged a NUL {R} and a lone surrogate {R}" in log_of(raised)
    assert left_data.state == "succeeded"
    data.refresh_from_db()
    assert data.data_map == {"runs": 1, f"key{R}": f"value{R}",
                             "nested": {f"surrogate{R}": [R, R, 1]}}
    # Not wedged: the healthy job goes on firing and nothing is left to record.
    done = Task.objects.filter(job=healthy, state="succeeded").count()
    drive(node, lambda: Task.objects.filter(job=healthy, state="succeeded").count() >= done + 2,
          message="the healthy job firing on")
    assert not any(t.pk in node.running for t in tasks)
    assert node.stats.step_errors == 0 and node.stats.unrecordable == 0


def test_a_task_deleted_while_it_runs_does_not_stop_its_neighbours(node, cluster, gates):
    kept_job = add_job(cluster, "kept", command="tests.test_never_wedge:gated")
    doomed_job = add_job(cluster, "doomed", command="tests.test_never_wedge:gated")
    kept, doomed = kept_job.run_now(), doomed_job.run_now()
    drive(node, lambda: "first" in log_of(kept) and "first" in log_of(doomed),
          message="both running, first lines stored")
    doomed_job.delete()  # an operator deletes a job while it runs: its task rows go with it
    gates["second"].set()
    # The log flush of a batch with the deleted task fails; the kept task's chunk is stored.
    drive(node, lambda: "second" in log_of(kept), message="the kept task's second line")
    gates["end"].set()
    # Both results in one batch, each with its last log line: the deleted task's fails it.
    wait_for(lambda: all(r.outcome for r in node.running.values()), message="both ended")
    drive(node, lambda: not node.running, message="both results recorded or dropped")

    kept.refresh_from_db()
    assert kept.state == "succeeded"
    lines = log_of(kept).splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["first", "second", "last"]
    assert not Task.objects.filter(pk=doomed.pk).exists()
    assert node.stats.dropped == 1 and node.stats.log_chunks_dropped >= 1
    assert node.stats.step_errors == 0


def test_a_record_the_database_refuses_is_written_in_a_minimal_form(node, cluster, gates,
                                                                      monkeypatch):
    # Whatever the sanitiser may miss: here it lets everything through, so the database (or
    # the UTF-8 encoding on the way to it) refuses the lone surrogate, on both databases.
    monkeypatch.setattr(text, "storable_text", lambda s: s)
    good_job = add_job(cluster, "good", command="tests.test_never_wedge:gated")
    bad_job = add_job(cluster, "bad", command="tests.test_never_wedge:gated",
                      parameters={"unstorable": True}, max_retries=3)
    good, bad = good_job.run_now(), bad_job.run_now()
    drive(node, lambda: len(node.running) == 2, message="both running")
    gates["second"].set()
    gates["end"].set()
    # Both results in one batch.
    wait_for(lambda: all(r.outcome for r in node.running.values()), message="both ended")
    drive(node, lambda: not node.running, message="both recorded")

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.state == "succeeded" and "second" in log_of(good)
    assert bad.state == "failed" and bad.exit_code == 1
    assert bad.error.startswith("its result could not be recorded: ")
    assert "surrogate" in bad.error and bad.error.isascii()
    assert not Task.objects.filter(retry_of=bad).exists()  # the job did not fail: no retry
    assert node.stats.unrecordable == 1 and node.stats.dropped == 0
    assert node.stats.step_errors == 0


def test_a_retry_at_attempt_1100_waits_the_capped_backoff(node, cluster):
    job = add_job(cluster, "stubborn", command="tests.test_never_wedge:fail",
                  max_retries=2**31 - 1, retry_backoff_seconds=10.0)
    now = db_now()
    task = Task.objects.create(cluster=cluster, job=job, scheduled_for=now, attempt=1_100,
                               trigger="retry", state="queued", not_before=now)
    drive(node, finished(task), message="attempt 1,100 recorded")
    task.refresh_from_db()
    assert task.state == "failed" and "attempt 1100" in task.error
    retry = Task.objects.get(retry_of=task)
    assert retry.attempt == 1_101 and retry.state == "queued"
    assert retry.not_before - task.finished_at == pytest.approx(
        timedelta(seconds=timing.RETRY_BACKOFF_CAP), abs=timedelta(seconds=5))
    assert node.stats.step_errors == 0


# ---------------------------------------------------------------- a real node process


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.skipif(not is_postgres(), reason="PostgreSQL's text and jsonb refuse NUL")
def test_a_node_process_is_not_wedged_by_nul_bytes(cluster, start_node):
    healthy = add_job(cluster, "healthy", command="tests.test_node:noop")
    add_interval(healthy, 1)
    shell = add_job(cluster, "nul-shell", kind="shell", command=NUL_SHELL)
    raising = add_job(cluster, "nul-raise", command="tests.test_never_wedge:raise_unstorable")
    data = add_job(cluster, "nul-data", command="tests.test_never_wedge:leave_unstorable_data",
                   stateful=True)
    node = start_node("--cluster", "test", "--node", "n1", "--heartbeat-interval", "0.2",
                      "--dead-after", "1.5")
    wait_for(lambda: Task.objects.filter(job=healthy, state="succeeded").exists(), timeout=30,
             message="the node firing")
    tasks = [job.run_now() for job in (shell, raising, data)]
    wait_for(lambda: all(finished(t)() for t in tasks), timeout=20,
             message=f"the three recorded\n{node.output()}")

    shell_task, raised, left_data = (Task.objects.get(pk=t.pk) for t in tasks)
    assert shell_task.state == "succeeded" and log_of(shell_task) == f"a{R}b\n"
    assert raised.state == "failed"
    assert raised.error == f"RuntimeError: a NUL {R} and a lone surrogate {R}"
    assert "Traceback" in log_of(raised)
    assert left_data.state == "succeeded"
    data.refresh_from_db()
    assert data.data_map[f"key{R}"] == f"value{R}"
    # Not wedged: the healthy job fires on and the member's running count drops back to 0.
    done = Task.objects.filter(job=healthy, state="succeeded").count()
    wait_for(lambda: Task.objects.filter(job=healthy, state="succeeded").count() >= done + 2,
             timeout=20, message="the healthy job firing on")
    wait_for(lambda: Member.objects.get(name="n1").running_tasks == 0, timeout=20,
             message="nothing left running")
    assert "Traceback" not in node.output()
