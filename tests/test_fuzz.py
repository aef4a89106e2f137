"""Fuzzing the doors: the operator's commands and the admin's forms and actions, fed hostile
values (NUL, lone surrogates, names with a trailing newline, huge and non-finite numbers,
dates at the calendar's ends, deep and huge JSON). Whatever comes in, a command answers with a
CommandError (argparse's refusals included) and a page is never a 500: no other exception may
escape, and a refused form changes nothing.

The chains' and orders' commands are fuzzed the same way, on a chain with an order.

Deterministic (derandomize) and fast (a few dozen examples per door; the whole file runs in
well under 30 s on SQLite). Run it on PostgreSQL too: NUL in text only fails there.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.models import ChainNode, Cluster, Event, Job, JobChain, Order, Schedule, Task

# Hypothesis warns that a 70 KiB example has a long repr: that example is the point.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

FUZZ = settings(max_examples=30, derandomize=True, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------- strategies

NASTY_TEXT = ["", " ", "\n", "echo\n", "a\x00b", "\x00", "\ud800", "x\udfff", "é", "名前",
              "a" * 101, "a" * 5000, "'; drop table x; --", "\u202e", "\r\n", "-", "--all",
              "NaN", "null", "{}", "[]"]
text = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=12),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Lu", "Nd"]), max_size=6),
)
name = st.one_of(st.sampled_from(["echo", "test", "ok-1", "ok.2:x"]), text,
                 st.sampled_from(["echo", "test"]).map(lambda n: n + "\n"))
number = st.one_of(
    st.sampled_from(["0", "-1", "1", "1e23", "nan", "inf", "-inf", "2147483648",
                     "9223372036854775808", "9" * 30, "0x10", "1_000", " 5", "5.5", ""]),
    st.integers().map(str),
    st.floats().map(repr),
)
when = st.one_of(
    st.sampled_from(["now", "9999-12-31T23:59:59", "0001-01-01", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-12:00", "99999999999d", "1e400d", "1h", "0s", "7d",
                     "2026-02-30", "2026-13-01", "24:00", "2026-03-29T02:30", "garbage"]),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(min_value=0, max_value=10**15).map(lambda n: f"{n}d"),
)
zone = st.one_of(st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/Adak",
                                  "Mars/Base", "localtime", "posix/UTC", "Europe", "../etc",
                                  "UTC\x00", "UTC\n"]), text)
cron = st.one_of(st.sampled_from(["* * * * *", "61 * * * *", "* * *", "0 0 31 2 *",
                                  "*/0 * * * *", "@hourly", "0 3 * * *\n"]), text)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)), max_leaves=8)


def deep(depth: int) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}"


json_text = st.one_of(
    st.sampled_from(["{", "null", "[]", '{"a": NaN}', '{"a": "\\u0000"}', '{"\\ud800": 1}',
                     '{"a": ' + "9" * 5000 + "}", "[" * 5000, '{"a": "' + "x" * 70_000 + '"}']),
    st.integers(min_value=1, max_value=3000).map(deep),
    json_value.map(lambda v: json.dumps(v, allow_nan=True)),
    json_value.map(lambda v: json.dumps({"k": v}, allow_nan=True)),
    text,
)


def option(flag: str, values) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [flag, v]))


def command_line(*parts) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda chunks: [a for chunk in chunks for a in chunk])


one = st.builds(lambda v: [v], name)
cluster_opt = st.builds(lambda v: ["--cluster", v], name)
COMMANDS = {
    "addjob": command_line(cluster_opt, one, st.sampled_from([["--shell"], ["--python"]]),
                           st.builds(lambda v: [v], text), option("--params", json_text),
                           option("--timeout", number), option("--retries", number),
                           option("--max-parallel", number), option("--affinity", name),
                           option("--title", text)),
    "addschedule": command_line(cluster_opt, one,
                                st.one_of(st.builds(lambda v: ["--cron", v], cron),
                                          st.builds(lambda v: ["--interval", v], number),
                                          st.builds(lambda v: ["--once", v], when)),
                                option("--timezone", zone), option("--start", when),
                                option("--end", when), option("--actor", text)),
    "runjob": command_line(cluster_opt, one, option("--params", json_text),
                           # a valid wait would really wait: only refusals and a blink
                           option("--wait", st.sampled_from(["nan", "inf", "-inf", "-1", "0",
                                                             "1e308", "abc", "0.01"]))),
    "tasks": command_line(cluster_opt, option("--job", name), option("--limit", number),
                          option("--state", text)),
    "auditfires": command_line(cluster_opt, option("--since", when), option("--until", when),
                               option("--job", name)),
    "pausejob": command_line(cluster_opt, st.lists(name, max_size=3)),
    "resumejob": command_line(cluster_opt, st.lists(name, max_size=3)),
    "pauseschedule": command_line(st.lists(number, min_size=1, max_size=3)),
    "tasklog": command_line(st.builds(lambda v: [v], number)),
    "jobs": command_line(cluster_opt),
    "cluster": command_line(cluster_opt),
    "switchover": command_line(cluster_opt, option("--to", name)),
}
# The chains' and orders' commands, on the world's chain "flow" and its order "o1" (or not).
chain_arg = st.builds(lambda v: [v], st.one_of(st.just("flow"), name))
order_arg = st.builds(lambda v: [v], st.one_of(st.just("o1"), name))
state_arg = st.builds(lambda v: [v], st.one_of(st.sampled_from(["load", "done"]), name))
operated = command_line(cluster_opt, chain_arg, order_arg, option("--reason", text),
                        option("--actor", text))
COMMANDS.update({
    "addorder": command_line(cluster_opt, chain_arg, one, option("--title", text),
                             option("--parameters", json_text), option("--priority", number),
                             option("--state", name), option("--end-state", name),
                             st.one_of(st.just([]), st.builds(lambda v: ["--cron", v], cron),
                                       st.builds(lambda v: ["--interval", v], number))),
    "moveorder": command_line(cluster_opt, chain_arg, order_arg, state_arg,
                              option("--reason", text)),
    "suspendorder": operated, "resumeorder": operated, "resetorder": operated,
    "removeorder": operated,
    "order": command_line(cluster_opt, chain_arg, order_arg),
    "orders": command_line(cluster_opt, option("--chain", name), option("--limit", number),
                           option("--status", text)),
    "stopchain": command_line(cluster_opt, chain_arg, option("--reason", text)),
    "startchain": command_line(cluster_opt, chain_arg, option("--reason", text)),
    "nodeaction": command_line(cluster_opt, chain_arg, state_arg,
                               st.builds(lambda v: [v], st.one_of(
                                   st.sampled_from(["active", "stopped", "skipped"]), text)),
                               option("--reason", text)),
})


@pytest.fixture
def world(cluster, shell_job):
    schedule = Schedule(job=shell_job, kind="cron", cron="0 3 * * *")
    schedule.full_clean()
    schedule.save()
    Task.objects.create(cluster=cluster, job=shell_job, trigger="manual", state="succeeded",
                        scheduled_for=schedule.next_fire_at)
    flow = JobChain.objects.create(cluster=cluster, name="flow")
    ChainNode.objects.create(chain=flow, state="load", job=shell_job, next_state="done",
                             error_state="done")
    ChainNode.objects.create(chain=flow, state="done", position=1)
    Order.add(flow, "o1", actor="tester")
    return shell_job


def snapshot() -> dict:
    return {model.__name__: list(model.objects.order_by("pk").values())
            for model in (Cluster, Job, Schedule, Task, Event, JobChain, ChainNode, Order)}


# ---------------------------------------------------------------------------- commands


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_answer_any_input_with_a_command_error_at_worst(world, command):
    @FUZZ
    @given(args=COMMANDS[command])
    def run(args):
        before = snapshot()
        try:
            call_command(command, *args, stdout=StringIO(), stderr=StringIO())
        except CommandError as exc:
            assert str(exc).strip(), "a refusal says why"
            if exc.returncode == 1 and command == "auditfires":
                return  # the audit's verdict, not a refusal
            assert snapshot() == before, f"{command} {args!r} was refused yet changed rows"

    run()


# ---------------------------------------------------------------------------- admin forms


def url(model, view: str, *args) -> str:
    return reverse(f"admin:scheduler_{model._meta.model_name}_{view}", args=args)


def job_form(cluster_pk, fields: dict) -> dict:
    data = {"cluster": cluster_pk, "name": "nightly", "title": "", "kind": "shell",
            "command": "echo hi", "working_directory": "", "parameters": "{}", "data_map": "{}",
            "timeout_seconds": "", "max_retries": "0", "retry_backoff_seconds": "10",
            "max_parallel": "1", "overlap_policy": "queue", "recover_lost": "on",
            "affinity": "", "executor": "node",
            "schedules-TOTAL_FORMS": "0", "schedules-INITIAL_FORMS": "0",
            "schedules-MIN_NUM_FORMS": "0", "schedules-MAX_NUM_FORMS": "1000"}
    data.update(fields)
    return data


def schedule_form(job_pk, fields: dict) -> dict:
    data = {"job": job_pk, "kind": "cron", "title": "", "cron": "0 3 * * *", "timezone": "UTC",
            "interval_seconds": "", "run_at_0": "", "run_at_1": "", "start_at_0": "",
            "start_at_1": "", "end_at_0": "", "end_at_1": "", "misfire_policy": "run_once",
            "misfire_grace_seconds": "5", "run_all_limit": "100"}
    data.update(fields)
    return data


def dates(prefix: str):
    return st.tuples(when, st.sampled_from(["", "00:00", "23:59:59", "25:00", "x"])).map(
        lambda pair: {f"{prefix}_0": pair[0][:10], f"{prefix}_1": pair[1]})


job_fields = st.fixed_dictionaries({}, optional={
    "name": name, "title": text, "kind": st.sampled_from(["shell", "python", "x"]),
    "command": text, "working_directory": text, "parameters": json_text, "data_map": json_text,
    "timeout_seconds": number, "max_retries": number, "retry_backoff_seconds": number,
    "max_parallel": number, "overlap_policy": text, "affinity": name, "executor": text,
})
schedule_fields = st.tuples(
    st.fixed_dictionaries({}, optional={
        "kind": st.sampled_from(["cron", "interval", "once", "x"]), "title": text, "cron": cron,
        "timezone": zone, "interval_seconds": number, "misfire_policy": text,
        "misfire_grace_seconds": number, "run_all_limit": number}),
    st.one_of(st.just({}), dates("run_at")), st.one_of(st.just({}), dates("start_at")),
    st.one_of(st.just({}), dates("end_at")),
).map(lambda parts: {k: v for part in parts for k, v in part.items()})


def on_the_wire(data: dict) -> dict:
    """What a browser can send: bytes, which Django decodes as UTF-8 with replacement, so a
    lone surrogate arrives as U+FFFD (the test client would fail to encode it instead)."""
    def wire(value):
        if isinstance(value, list):
            return [wire(v) for v in value]
        return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return {key: wire(value) for key, value in data.items()}


def send(client, target: str, data: dict, method: str = "post"):
    return getattr(client, method)(target, on_the_wire(data))


def assert_no_change_if_refused(response, before) -> None:
    assert response.status_code != 500
    if response.status_code == 200:  # the form again, with its errors
        assert snapshot() == before


def test_the_job_forms_never_fail(admin_client, world):
    @FUZZ
    @given(fields=job_fields, change=st.booleans())
    def post(fields, change):
        before = snapshot()
        if change:
            data = job_form(world.cluster_id, {"name": "echo", "command": world.command,
                                               **fields})
            response = send(admin_client, url(Job, "change", world.pk), data)
        else:
            response = send(admin_client, url(Job, "add"), job_form(world.cluster_id, fields))
        assert_no_change_if_refused(response, before)
        Job.objects.exclude(pk=world.pk).delete()

    post()


def test_the_schedule_forms_and_preview_never_fail(admin_client, world):
    schedule = world.schedules.get()

    @FUZZ
    @given(fields=schedule_fields, change=st.booleans(), now=when)
    def post(fields, change, now):
        before = snapshot()
        target = url(Schedule, "change", schedule.pk) if change else url(Schedule, "add")
        response = send(admin_client, target, schedule_form(world.pk, fields))
        assert_no_change_if_refused(response, before)
        Schedule.objects.exclude(pk=schedule.pk).delete()
        query = {k: v for k, v in fields.items() if k[-2:] not in ("_0", "_1")}
        query.update({"run_at": fields.get("run_at_0", ""), "now": now[:19].replace("T", " ")})
        preview = send(admin_client, reverse("admin:scheduler_schedule_preview"), query, "get")
        assert preview.status_code == 200
        for page in (url(Schedule, "change", schedule.pk), url(Job, "change", world.pk)):
            assert admin_client.get(page).status_code == 200

    post()


def test_the_chain_and_order_forms_never_fail(admin_client, world):
    chain = JobChain.objects.create(cluster=world.cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="load", job=world, next_state="done")
    ChainNode.objects.create(chain=chain, state="done", position=1)

    @FUZZ
    @given(chain_name=name, state=name, next_state=text, order_id=name, params=json_text,
           priority=number, initial=name)
    def post(chain_name, state, next_state, order_id, params, priority, initial):
        before = snapshot()
        data = {"cluster": world.cluster_id, "name": chain_name, "title": "", "max_orders": "",
                "nodes-TOTAL_FORMS": "2", "nodes-INITIAL_FORMS": "0",
                "nodes-MIN_NUM_FORMS": "0", "nodes-MAX_NUM_FORMS": "1000",
                "nodes-0-position": "0", "nodes-0-state": state, "nodes-0-job": world.pk,
                "nodes-0-next_state": next_state, "nodes-0-error_state": "",
                "nodes-0-action": "active", "nodes-1-position": "1", "nodes-1-state": "end",
                "nodes-1-job": "", "nodes-1-next_state": "", "nodes-1-error_state": "",
                "nodes-1-action": "active"}
        assert_no_change_if_refused(send(admin_client, url(JobChain, "add"), data), before)
        JobChain.objects.exclude(pk=chain.pk).delete()
        before = snapshot()
        order = {"chain": chain.pk, "order_id": order_id, "title": "", "parameters": params,
                 "priority": priority, "initial_state": initial, "end_state": ""}
        assert_no_change_if_refused(send(admin_client, url(Order, "add"), order), before)
        Order.objects.all().delete()

    post()


def test_the_actions_never_fail(admin_client, world):
    schedule = world.schedules.get()
    actions = {Job: ["pause_jobs", "resume_jobs", "run_jobs_now"],
               Schedule: ["pause_schedules", "resume_schedules"],
               Cluster: ["switch_over"], Task: ["cancel_tasks"]}

    @FUZZ
    @given(model=st.sampled_from(sorted(actions, key=lambda m: m.__name__)), data=st.data(),
           ids=st.lists(st.one_of(number, st.sampled_from([str(world.pk), str(schedule.pk)])),
                        max_size=3))
    def post(model, data, ids):
        action = data.draw(st.one_of(st.sampled_from(actions[model]), text))
        response = send(admin_client, url(model, "changelist"),
                        {"action": action, "_selected_action": ids})
        assert response.status_code != 500

    post()
