"""What each executor declares (scheduler/executors/registry.py) is what it does, and what no
executor declares is refused at every door (model, admin, API, addjob), naming the field."""

from __future__ import annotations

import html
import itertools
import json
import threading
import time
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from scheduler.executors import Cancel, LogBuffer, TaskRun, execute, registry
from scheduler.models import Job
from tests.conftest import console_user

MODULE = __name__


def wait_until(predicate, timeout: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------------------------
# The declarations


def test_every_declaration_has_a_runner_and_the_model_knows_its_fields():
    supports = registry.declared()
    assert {(s.executor, s.kind) for s in supports} == {
        ("node", "shell"), ("node", "python"), ("node", "task"),
        ("celery", "shell"), ("celery", "python")}
    for s in supports:
        assert registry.find(s.executor, s.kind).support is s
        assert s.executor in Job.Executor.values and s.kind in Job.Kind.values
        assert set(s.isolations) <= set(Job.Isolation.values)
        assert s.runs_on


COMMANDS = {"shell": "true", "python": "tests.jobs:noop", "task": "scheduler.demo_tasks.add"}


@pytest.mark.parametrize(("executor", "kind", "isolation", "stateful"), list(itertools.product(
    Job.Executor.values, Job.Kind.values, Job.Isolation.values, (False, True))))
def test_the_model_takes_exactly_the_declared_combinations(executor, kind, isolation, stateful):
    job = Job(name="j", kind=kind, command=COMMANDS[kind], executor=executor,
              isolation=isolation, stateful=stateful)
    found = registry.find(executor, kind)
    allowed = (found is not None
               and (isolation == "thread" or isolation in found.support.isolations)
               and (not stateful or found.support.data_map))
    try:
        job.clean()
    except ValidationError as exc:
        assert not allowed, exc.message_dict
        assert set(exc.message_dict) <= {"executor", "isolation", "stateful"}
    else:
        assert allowed


def test_the_refusals_say_what_is_wrong():
    assert registry.refusals("celery", "task", "thread", False) == {"executor": (
        "The celery executor runs shell and python jobs, not task jobs; task jobs run with the "
        "executor node.")}
    problems = registry.refusals("node", "shell", "process", True)
    assert problems["isolation"].startswith("Only python jobs have an isolation 'process'")
    assert problems["stateful"].startswith("A shell job leaves no data map to keep")
    assert registry.refusals("celery", "python", "process", True) == {}
    # Values no executor knows are the field's own choices to refuse.
    assert registry.refusals("lambda", "shell", "thread", False) == {}


# --------------------------------------------------------------------------------------------
# What the node's executors declare, shown by running them (real processes and threads)


def slow(ctx):
    """Logs a line, then waits for its cancel (30 s at most); leaves a data map."""
    ctx.logger.info("first line")
    ctx.cancelled.wait(30)
    return {"stopped": ctx.cancelled.is_set()}


def quick(ctx):
    return {"ran": True}


SLOW = {"shell": "echo first line; sleep 30", "python": f"{MODULE}:slow"}
QUICK = {"shell": "echo done", "python": f"{MODULE}:quick"}


def node_cases():
    """(support, isolation) for each executor that runs on the node and needs no backend."""
    return [pytest.param(s, isolation, id=f"{s.kind}-{isolation}")
            for s in registry.declared() if s.executor == "node" and s.kind in SLOW
            for isolation in (s.isolations or ("thread",))]


def run_of(support, isolation, command, **fields) -> TaskRun:
    return TaskRun(task_id=1, job_name="probe", kind=support.kind, command=command,
                   isolation=isolation, executor=support.executor, **fields)


@pytest.mark.parametrize(("support", "isolation"), node_cases())
def test_a_declared_time_limit_stops_the_work(support, isolation):
    assert support.time_limit
    began = time.monotonic()
    outcome = execute(run_of(support, isolation, SLOW[support.kind], timeout=1), LogBuffer(),
                      Cancel(), kill_grace=1.0)
    assert outcome.state == "timed_out" and outcome.error == "timed out after 1 s"
    assert time.monotonic() - began < 8  # the 30 s of work were stopped


@pytest.mark.parametrize(("support", "isolation"), node_cases())
def test_a_declared_cancel_and_live_log_hold(support, isolation):
    assert support.cancel and support.live_log
    log, cancel, result = LogBuffer(), Cancel(), {}
    runner = threading.Thread(target=lambda: result.update(outcome=execute(
        run_of(support, isolation, SLOW[support.kind], timeout=60), log, cancel,
        kill_grace=1.0)))
    runner.start()
    seen: list[str] = []

    def logged() -> bool:
        seen.append(log.drain())
        return "first line" in "".join(seen)

    # The job's first line reaches the log while it still runs.
    wait_until(logged, what="the first line in the live log")
    assert runner.is_alive()
    cancel.request("operator")
    runner.join(10)
    assert not runner.is_alive()
    assert result["outcome"].state == "cancelled"


@pytest.mark.parametrize(("support", "isolation"), node_cases())
def test_a_data_map_comes_back_only_where_declared(support, isolation):
    outcome = execute(run_of(support, isolation, QUICK[support.kind], stateful=True),
                      LogBuffer(), Cancel())
    assert outcome.state == "succeeded"
    assert (outcome.data == {"ran": True}) is support.data_map
    if not support.data_map:
        assert outcome.data is None


def test_a_combination_nobody_declares_fails_without_running():
    outcome = execute(TaskRun(task_id=1, job_name="x", kind="task", command="a.b",
                              executor="celery"), LogBuffer(), Cancel())
    assert (outcome.state, outcome.error) == (
        "failed", "the executor 'celery' does not run 'task' jobs")


# --------------------------------------------------------------------------------------------
# Every door refuses what no executor declares


def form(cluster, **overrides) -> dict:
    data = {
        "cluster": cluster.pk, "name": "nightly", "title": "", "kind": "shell",
        "command": "echo hi", "working_directory": "", "parameters": "{}", "data_map": "{}",
        "timeout_seconds": "", "max_retries": "0", "retry_backoff_seconds": "10",
        "max_parallel": "1", "overlap_policy": "queue", "recover_lost": "on", "affinity": "",
        "executor": "node", "isolation": "thread", "celery_queue": "",
        "schedules-TOTAL_FORMS": "0", "schedules-INITIAL_FORMS": "0",
        "schedules-MIN_NUM_FORMS": "0", "schedules-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


REFUSED = [
    (dict(kind="task", command="scheduler.demo_tasks.add", executor="celery"), "executor",
     "The celery executor runs shell and python jobs, not task jobs"),
    (dict(stateful="on"), "stateful", "A shell job leaves no data map to keep"),
    (dict(kind="task", command="scheduler.demo_tasks.add", isolation="process"), "isolation",
     "Only python jobs have an isolation"),
]


@pytest.mark.parametrize(("fields", "field", "message"), REFUSED)
def test_the_admin_refuses_an_undeclared_combination(admin_client, cluster, fields, field,
                                                     message):
    response = admin_client.post(reverse("admin:scheduler_job_add"), form(cluster, **fields))
    assert response.status_code == 200
    assert message in html.unescape(response.content.decode())
    assert not Job.objects.exists()


@pytest.mark.parametrize(("fields", "field", "message"), REFUSED)
def test_the_api_refuses_an_undeclared_combination_naming_the_field(cluster, fields, field,
                                                                    message):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=console_user("ada", "administrator"))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    body = {"cluster": cluster.pk, "name": "nightly", "kind": "shell", "command": "echo hi",
            **fields}
    if "stateful" in body:
        body["stateful"] = True
    response = client.post("/api/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()["errors"]) == {field}
    assert message in response.json()["detail"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--shell", "true", "--stateful"], "--stateful: A shell job leaves no data map to keep"),
    (["--task", "scheduler.demo_tasks.add", "--stateful"],
     "--stateful: A task job leaves no data map to keep"),
    (["--task", "scheduler.demo_tasks.add", "--isolation", "process"],
     "--isolation: Only python jobs have an isolation 'process'"),
])
def test_addjob_refuses_an_undeclared_combination(cluster, args, message):
    with pytest.raises(CommandError) as refused:
        call_command("addjob", "--cluster", cluster.name, "j", *args, stdout=StringIO())
    assert message in str(refused.value)
    assert not Job.objects.exists()


def test_a_stateful_python_job_is_taken_at_every_door(cluster):
    call_command("addjob", "--cluster", cluster.name, "counter", "--python", "tests.jobs:noop",
                 "--stateful", stdout=StringIO())
    assert Job.objects.get(name="counter").stateful


# --------------------------------------------------------------------------------------------
# manage.py executors


def test_the_executors_command_shows_every_declaration():
    out = StringIO()
    call_command("executors", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["executor", "kind", "isolation", "time"]
    assert any(line.split()[:3] == ["celery", "python", "thread,"] for line in lines)
    assert any(line.startswith("node      task") and "ends the task only" in line
               for line in lines)
    out = StringIO()
    call_command("executors", "--json", stdout=out)
    rows = json.loads(out.getvalue())
    assert [(r["executor"], r["kind"]) for r in rows] == [
        (s.executor, s.kind) for s in registry.declared()]
    assert {r["kind"]: r["data_map"] for r in rows if r["executor"] == "node"} == {
        "shell": False, "python": True, "task": False}
