"""The API never answers 5xx: schemathesis generates requests from /api/schema/ and sends
them through the WSGI app with a token, as an operator and as an administrator (derandomized,
a few examples per operation). Ids in paths are replaced by those of real rows half of the
time, so bodies reach the models' validation and the actions, not only the 404."""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from opscenter.wsgi import application
from tests.conftest import console_user

pytestmark = pytest.mark.django_db

EXAMPLES = 6  # per operation: the whole run stays well under a minute


@pytest.fixture
def api_schema(db):
    # Requests through the bare WSGI app would close the test's connection (and with it its
    # transaction) at each request's end, as Django's test client avoids: not here either.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture(params=["operator", "administrator"])
def world(request, cluster):
    """A row of each kind, and the token of an operator (what the fuzz must reach: the
    actions) or of an administrator (creating, changing, deleting)."""
    from scheduler.models import ChainNode, Job, JobChain, Member, Order, Schedule, TaskLog

    job = Job.objects.create(cluster=cluster, name="echo", kind="shell", command="echo hi")
    schedule = Schedule(job=job, kind="interval", interval_seconds=60)
    schedule.save()
    task = job.run_now("fuzz")
    TaskLog.objects.create(task=task, text="hello wörld\n")
    # A passive cluster with a standby primary: a fuzzed switch-over can be done, not only
    # refused.
    cluster.mode = "passive"
    cluster.save(update_fields=["mode"])
    member = Member.objects.create(cluster=cluster, name="n1", mode="passive", host="h",
                                   pid=1, version="1", state="active", role="backup")
    Member.objects.create(cluster=cluster, name="n2", mode="passive", host="h", pid=2,
                          version="1", state="standby", role="primary")
    chain = JobChain.objects.create(cluster=cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="a", job=job, next_state="done",
                             error_state="done", position=0)
    ChainNode.objects.create(chain=chain, state="done", position=1)
    order = Order.objects.create(chain=chain, order_id="o1", initial_state="a", state="a")
    token = Token.objects.create(user=console_user("fuzz", request.param))
    ids = {"clusters": cluster.pk, "members": member.pk, "jobs": job.pk,
           "schedules": schedule.pk, "tasks": task.pk, "chains": chain.pk,
           "orders": order.pk, "events": 1}
    return token.key, ids


def test_no_request_makes_a_server_error(api_schema, world):
    key, ids = world
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        def check(case):
            if case.path_parameters and "id" in case.path_parameters and \
                    sum(map(ord, repr(case.body))) % 2:
                case.path_parameters["id"] = ids.get(case.path.split("/")[2], 1)
            response = case.call(headers={"Authorization": f"Token {key}"})
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collected: every operation is tried
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
