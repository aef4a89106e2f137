"""The REST API: authentication, the console's roles, every endpoint's happy path and a
refusal, the audit event (source "api", the reason), and the Node.js seed's shape."""

from __future__ import annotations

import json
import re

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from scheduler.models import (
    ChainNode,
    Cluster,
    Event,
    Job,
    JobChain,
    Member,
    Order,
    Schedule,
    Task,
    TaskLog,
)
from tests.conftest import console_user

pytestmark = pytest.mark.django_db


def api_client(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def viewer(db):
    return api_client(console_user("vera", "viewer"))


@pytest.fixture
def operator(db):
    return api_client(console_user("otto", "operator"))


@pytest.fixture
def admin(db):
    return api_client(console_user("ada", "administrator"))


@pytest.fixture
def chain(cluster):
    extract = Job.objects.create(cluster=cluster, name="extract", kind="shell", command="true")
    load = Job.objects.create(cluster=cluster, name="load", kind="shell", command="true")
    chain = JobChain.objects.create(cluster=cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="extract", job=extract, next_state="load",
                             error_state="failed", position=0)
    ChainNode.objects.create(chain=chain, state="load", job=load, next_state="done",
                             error_state="failed", position=1)
    ChainNode.objects.create(chain=chain, state="done", position=2)
    ChainNode.objects.create(chain=chain, state="failed", position=3)
    return chain


@pytest.fixture
def order(chain):
    return Order.objects.create(chain=chain, order_id="o1", initial_state="extract",
                                state="extract")


def last_event(kind: str) -> Event:
    return Event.objects.filter(kind=kind).latest("id")


def post(client, url, data=None):
    return client.post(url, data if data is not None else {}, format="json")


# ------------------------------------------------------------------ authentication


def test_anonymous_gets_401_as_json(shell_job):
    response = APIClient().get("/api/jobs/")
    assert response.status_code == 401
    assert "detail" in response.json()
    assert response.headers["WWW-Authenticate"].startswith("Token")


def test_a_user_without_a_role_gets_403(db):
    response = api_client(console_user("nemo", None)).get("/api/jobs/")
    assert response.status_code == 403
    assert "viewer" in response.json()["detail"]


def test_token_authentication_works(viewer, shell_job):
    response = viewer.get("/api/jobs/")
    assert response.status_code == 200
    assert [job["name"] for job in response.json()["results"]] == ["echo"]


def test_session_authentication_works(shell_job):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(console_user("otto", "operator"))
    assert client.get(f"/api/jobs/{shell_job.pk}/").status_code == 200
    # A session's write needs the CSRF token, as any form of the console.
    assert post(client, f"/api/jobs/{shell_job.pk}/pause/").status_code == 403


def test_a_wrong_token_is_refused(shell_job):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token nope")
    assert client.get("/api/jobs/").status_code == 401


# ------------------------------------------------------------------ roles


def test_viewer_cannot_pause(viewer, shell_job):
    response = post(viewer, f"/api/jobs/{shell_job.pk}/pause/", {"reason": "x"})
    assert response.status_code == 403
    assert "operate_job" in response.json()["detail"]
    shell_job.refresh_from_db()
    assert not shell_job.paused


def test_operator_can_pause_but_not_edit_a_command(operator, shell_job):
    assert post(operator, f"/api/jobs/{shell_job.pk}/pause/").status_code == 200
    response = operator.patch(f"/api/jobs/{shell_job.pk}/", {"command": "rm -rf /"},
                              format="json")
    assert response.status_code == 403
    assert "change_job" in response.json()["detail"]
    shell_job.refresh_from_db()
    assert shell_job.command.startswith("echo")


# ------------------------------------------------------------------ clusters and members


def test_clusters_and_members_are_read(viewer, cluster):
    Member.objects.create(cluster=cluster, name="n1", mode="single", host="h", pid=1,
                          version="1", state="active")
    assert viewer.get("/api/clusters/").json()["results"][0]["name"] == "test"
    members = viewer.get(f"/api/members/?cluster={cluster.pk}&state=active").json()
    assert [m["name"] for m in members["results"]] == ["n1"]
    assert viewer.get(f"/api/clusters/{cluster.pk}/").status_code == 200
    assert post(viewer, "/api/clusters/", {"name": "x"}).status_code in (403, 405)


# ------------------------------------------------------------------ switch-over


def add_member(cluster, name, state, **kw):
    return Member.objects.create(cluster=cluster, name=name, mode=cluster.mode, host="h",
                                 pid=1, version="1", state=state, **kw)


@pytest.fixture
def passive(db):
    cluster = Cluster.objects.create(name="pas", mode="passive")
    primary = add_member(cluster, "p", "active", role="primary")
    backup = add_member(cluster, "b1", "standby", role="backup", backup_precedence=1)
    dead = add_member(cluster, "b2", "dead", role="backup", backup_precedence=2)
    Cluster.objects.filter(pk=cluster.pk).update(lease_holder=primary, lease_epoch=7)
    return {"cluster": cluster, "primary": primary, "backup": backup, "dead": dead}


def switchover(client, cluster, data):
    return post(client, f"/api/clusters/{cluster.pk}/switchover/", data)


def test_an_operator_switches_over_with_a_reason(operator, passive):
    cluster, backup = passive["cluster"], passive["backup"]
    response = switchover(operator, cluster, {"target": backup.pk, "reason": "patch host-p"})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["target"]["name"] == "b1" and body["cluster"]["handover_to"] == backup.pk
    assert "Switch-over to b1 requested" in body["detail"]
    cluster.refresh_from_db()
    assert cluster.handover_to_id == backup.pk
    event = last_event(Event.Kind.SWITCHOVER_REQUESTED)
    assert (event.actor, event.source, event.reason) == ("otto", "api", "patch host-p")


def test_a_switch_over_goes_to_the_primary_by_default(operator, passive):
    cluster = passive["cluster"]
    Member.objects.filter(pk=passive["primary"].pk).update(state="standby")
    Member.objects.filter(pk=passive["backup"].pk).update(state="active")
    response = switchover(operator, cluster, {"reason": "back home"})
    assert response.status_code == 202, response.json()
    cluster.refresh_from_db()
    assert cluster.handover_to_id == passive["primary"].pk


def test_a_viewer_may_not_switch_over(viewer, passive):
    response = switchover(viewer, passive["cluster"], {"reason": "r"})
    assert response.status_code == 403
    assert "switchover_cluster" in response.json()["detail"]
    assert not Event.objects.filter(kind=Event.Kind.SWITCHOVER_REQUESTED).exists()


def test_switch_over_needs_its_own_permission_not_operate(passive):
    from django.contrib.auth.models import Permission

    user = console_user("jo", "viewer")
    user.user_permissions.add(Permission.objects.get(codename="operate_job"))
    response = switchover(api_client(user), passive["cluster"], {"reason": "r"})
    assert response.status_code == 403


@pytest.mark.parametrize(("case", "status", "expected"), [
    ("no reason", 400, "reason:"),
    ("blank reason", 400, "reason:"),
    ("unknown member", 400, "target: There is no member 999999 in cluster pas"),
    ("not a number", 400, "target:"),
    ("other cluster's member", 400, "target: There is no member"),
    ("dead member", 409, "member b2"),
    ("active member", 409, "member p"),
    ("active cluster", 409, "is not a passive cluster"),
    ("primary not standby", 409, "the primary of 'pas' is not a live standby member"),
])
def test_a_refused_switch_over_says_why_and_changes_nothing(operator, passive, case, status,
                                                            expected):
    cluster = passive["cluster"]
    other = Cluster.objects.create(name="other", mode="passive")
    stranger = add_member(other, "s", "standby")
    data = {"target": passive["backup"].pk, "reason": "a reason"}
    if case == "no reason":
        del data["reason"]
    elif case == "blank reason":
        data["reason"] = "  "
    elif case == "unknown member":
        data["target"] = 999999
    elif case == "not a number":
        data["target"] = "b1"
    elif case == "other cluster's member":
        data["target"] = stranger.pk
    elif case == "dead member":
        data["target"] = passive["dead"].pk
    elif case == "active member":
        data["target"] = passive["primary"].pk
    elif case == "active cluster":
        Cluster.objects.filter(pk=cluster.pk).update(mode="active")
    elif case == "primary not standby":
        del data["target"]
    response = switchover(operator, cluster, data)
    assert response.status_code == status, response.json()
    assert expected in response.json()["detail"]
    if status == 400:
        field = "target" if "target" in expected else "reason"
        assert field in response.json()["errors"]
    cluster.refresh_from_db()
    assert cluster.handover_to_id is None
    assert not Event.objects.filter(kind=Event.Kind.SWITCHOVER_REQUESTED).exists()


def test_unknown_cluster_switch_over_is_a_404(operator, passive):
    response = post(operator, "/api/clusters/999999/switchover/", {"reason": "r"})
    assert response.status_code == 404


# ------------------------------------------------------------------ jobs


def test_jobs_list_filters(viewer, cluster, shell_job):
    Job.objects.create(cluster=cluster, name="other", kind="shell", command="true",
                       paused=True)
    names = lambda q: [j["name"] for j in viewer.get(f"/api/jobs/?{q}").json()["results"]]  # noqa: E731
    assert names("paused=true") == ["other"]
    assert names("name=ech") == ["echo"]
    assert names(f"cluster={cluster.pk}") == ["echo", "other"]
    response = viewer.get("/api/jobs/?cluster=abc")
    assert response.status_code == 400
    assert "cluster" in response.json()["detail"]


def test_admin_creates_updates_and_deletes_a_job(admin, cluster):
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "nightly",
                                          "kind": "shell", "command": "echo hi"})
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    response = admin.patch(f"/api/jobs/{pk}/", {"command": "echo bye"}, format="json")
    assert response.status_code == 200
    assert Job.objects.get(pk=pk).command == "echo bye"
    assert admin.delete(f"/api/jobs/{pk}/").status_code == 204
    assert not Job.objects.filter(pk=pk).exists()
    # Every change is in the audit log, from the API's door, with who made it.
    events = list(Event.objects.filter(kind__in=("job.created", "job.changed", "job.deleted"))
                  .order_by("id").values_list("kind", "actor", "source", "message"))
    assert events == [("job.created", "ada", "api", "job nightly created (shell)"),
                      ("job.changed", "ada", "api", "job nightly changed: command"),
                      ("job.deleted", "ada", "api", "job nightly deleted")]


def test_a_bad_job_is_refused_naming_the_field(admin, cluster):
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "bad name",
                                          "command": "true"})
    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == {"name"}
    assert body["detail"].startswith("name:")
    # The model's clean() (as every door): a python job needs a dotted path.
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "p",
                                          "kind": "python", "command": "x"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"command"}
    assert not Job.objects.exists()


def test_a_celery_jobs_queue_is_written_and_read_a_bad_one_is_a_400(admin, cluster):
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "cel",
                                          "command": "true", "executor": "celery",
                                          "celery_queue": "amq.x"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"celery_queue"}
    assert "RabbitMQ reserves" in response.json()["detail"]
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "cel",
                                          "command": "true", "celery_queue": "reports"})
    assert response.status_code == 400
    assert "Only a job of executor celery" in response.json()["detail"]
    assert not Job.objects.exists()
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "cel",
                                          "command": "true", "executor": "celery",
                                          "celery_queue": "reports"})
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    got = admin.get(f"/api/jobs/{pk}/").json()
    assert (got["executor"], got["celery_queue"]) == ("celery", "reports")


def test_a_taken_job_name_is_a_400(admin, cluster, shell_job):
    response = post(admin, "/api/jobs/", {"cluster": cluster.pk, "name": "echo",
                                          "command": "true"})
    assert response.status_code == 400
    assert Job.objects.count() == 1


def test_unknown_fields_are_refused(admin, cluster, shell_job):
    response = admin.patch(f"/api/jobs/{shell_job.pk}/", {"paused": True, "bogus": 1},
                           format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"paused", "bogus"}


def test_pause_resume_through_the_model_with_the_audit_event(operator, shell_job):
    response = post(operator, f"/api/jobs/{shell_job.pk}/pause/", {"reason": "maintenance"})
    assert response.json()["changed"] is True
    event = last_event("job.paused")
    assert (event.actor, event.source, event.reason) == ("otto", "api", "maintenance")
    again = post(operator, f"/api/jobs/{shell_job.pk}/pause/")
    assert again.json()["changed"] is False
    assert "already" in again.json()["detail"]
    response = post(operator, f"/api/jobs/{shell_job.pk}/resume/", {"reason": "done"})
    assert response.json()["changed"] is True
    assert last_event("job.resumed").source == "api"


def test_run_now_with_parameters(operator, shell_job):
    response = post(operator, f"/api/jobs/{shell_job.pk}/run-now/",
                    {"reason": "hotfix", "parameters": {"day": "2026-01-01"}})
    assert response.status_code == 201
    task = Task.objects.get(pk=response.json()["id"])
    assert task.parameters == {"day": "2026-01-01"} and task.trigger == "manual"
    event = last_event("job.run_now")
    assert (event.source, event.reason) == ("api", "hotfix")


def test_run_now_refuses_bad_parameters(operator, shell_job):
    response = post(operator, f"/api/jobs/{shell_job.pk}/run-now/", {"parameters": [1]})
    assert response.status_code == 400
    assert "parameters" in response.json()["errors"]
    assert not Task.objects.exists()


@pytest.mark.parametrize("body", [
    {"reason": "a\x00b"},
    {"reason": 12},
    {"reason": "x" * 501},
    {"reason": "ok", "extra": True},
    [1, 2],
])
def test_bad_action_bodies_are_a_400(operator, shell_job, body):
    response = post(operator, f"/api/jobs/{shell_job.pk}/pause/", body)
    assert response.status_code == 400, response.json()
    assert response.json()["detail"]
    shell_job.refresh_from_db()
    assert not shell_job.paused


def test_deep_json_and_huge_numbers_are_a_400(operator, shell_job):
    url = f"/api/jobs/{shell_job.pk}/run-now/"
    deep = '{"parameters": ' + "[" * 100000 + "]" * 100000 + "}"
    huge = '{"parameters": {"n": ' + "9" * 10000 + "}}"
    for text in (deep, huge, "{not json"):
        response = operator.post(url, text, content_type="application/json")
        assert response.status_code == 400
        assert response.json()["detail"]
    assert not Task.objects.exists()


@pytest.mark.parametrize(("url", "body"), [
    ("/api/jobs/", {"cluster": 10**25, "name": "a", "command": "true"}),
    ("/api/jobs/", {"cluster": "x", "name": "a", "command": "true"}),
    ("/api/jobs/", {"name": "a", "command": "true", "timeout_seconds": 10**30}),
    ("/api/jobs/", {"name": "a", "command": "true", "max_retries": 2**40}),
        ("/api/jobs/", {"name": "a", "command": "t\x00rue"}),
    ("/api/jobs/", {"name": "a", "command": "true", "parameters": {"PATH": "x"}}),
    ("/api/jobs/", {"name": "a", "command": "true", "data_map": None}),
    ("/api/schedules/", {"job": 10**25, "kind": "interval", "interval_seconds": 5}),
    ("/api/schedules/", {"job": "JOB", "kind": "once", "run_at": "0001-01-01T00:00:00Z"}),
    ("/api/schedules/", {"job": "JOB", "kind": "once", "run_at": "9999-12-31T23:59:59Z"}),
    ("/api/schedules/", {"job": "JOB", "kind": "interval", "interval_seconds": 5,
                         "start_at": "9999-12-31T23:59:59+14:00"}),
    ("/api/schedules/", {"job": "JOB", "kind": "cron", "cron": "0 0 30 2 *"}),
    ("/api/orders/", {"chain": 10**25, "order_id": "x"}),
    ("/api/jobs/", {"name": "a", "frequency": 10**30, "script": "x"}),
    ("/api/jobs/", {"name": "a", "frequency": "999999999w", "script": "x", "repeat": False}),
    ("/api/jobs/", {"name": "a", "frequency": "5", "script": "x",
                    "startDate": "9999-12-31T23:59:59Z", "repeat": False}),
])
def test_wrong_types_huge_numbers_and_odd_dates_are_a_400(admin, cluster, shell_job, url, body):
    body = {k: (shell_job.pk if v == "JOB" else v) for k, v in body.items()}
    if url == "/api/jobs/" and "cluster" not in body:
        body["cluster"] = cluster.pk
    before = (Job.objects.count(), Schedule.objects.count(), Order.objects.count())
    response = post(admin, url, body)
    assert response.status_code == 400, response.json()
    assert response.json()["errors"]
    assert (Job.objects.count(), Schedule.objects.count(), Order.objects.count()) == before


def test_a_float_beyond_the_double_range_is_a_400(admin, cluster):
    response = admin.post("/api/jobs/", f'{{"cluster": {cluster.pk}, "name": "a", '
                          '"command": "true", "retry_backoff_seconds": 1e400}',
                          content_type="application/json")
    assert response.status_code == 400
    assert "retry_backoff_seconds" in response.json()["errors"]


def test_unknown_paths_and_ids_are_json_404(viewer, shell_job):
    for url in ("/api/nope/", "/api/jobs/99999999999999999999999/", "/api/jobs/12345/"):
        response = viewer.get(url)
        assert response.status_code == 404
        assert response.json()["detail"]


def test_nul_in_a_filter_is_a_400(viewer, shell_job):
    response = viewer.get("/api/jobs/?name=a%00b")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


# ------------------------------------------------------------------ the Node.js seed's shape


def test_seed_shape_creates_a_shell_job_with_an_interval(admin, cluster):
    response = post(admin, "/api/jobs/", {
        "name": "backup", "description": "nightly backup", "frequency": "5m",
        "startDate": "2026-01-01T00:00:00Z", "script": "tar czf /tmp/b.tgz /etc",
        "repeat": True})
    assert response.status_code == 201, response.json()
    job = Job.objects.get(name="backup")
    assert (job.kind, job.command, job.title) == ("shell", "tar czf /tmp/b.tgz /etc",
                                                  "nightly backup")
    schedule = job.schedules.get()
    assert (schedule.kind, schedule.interval_seconds) == ("interval", 300)
    assert last_event("schedule.created").source == "api"


def test_seed_shape_with_a_cron_frequency_and_run_once(admin, cluster):
    assert post(admin, "/api/jobs/", {"name": "c", "frequency": "*/5 * * * *",
                                      "script": "true"}).status_code == 201
    assert Schedule.objects.get(job__name="c").cron == "*/5 * * * *"
    assert post(admin, "/api/jobs/", {"name": "o", "frequency": 60, "script": "true",
                                      "repeat": False}).status_code == 201
    assert Schedule.objects.get(job__name="o").kind == "once"


def test_seed_shape_refuses_a_bad_frequency(admin, cluster):
    response = post(admin, "/api/jobs/", {"name": "x", "frequency": "* * *",
                                          "script": "true"})
    assert response.status_code == 400
    assert "frequency" in response.json()["errors"]
    assert not Job.objects.exists()


# ------------------------------------------------------------------ schedules


def test_schedules_create_update_pause_resume(admin, operator, shell_job):
    response = post(admin, "/api/schedules/", {"job": shell_job.pk, "kind": "cron",
                                               "cron": "0 3 * * *",
                                               "timezone": "Europe/Berlin"})
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    assert response.json()["next_fire_at"]
    assert last_event("schedule.created").source == "api"
    response = admin.patch(f"/api/schedules/{pk}/", {"cron": "0 4 * * *"}, format="json")
    assert response.status_code == 200
    assert last_event("schedule.changed").source == "api"
    assert Schedule.objects.get(pk=pk).version == 2
    assert post(operator, f"/api/schedules/{pk}/pause/", {"reason": "r"}).json()["changed"]
    assert last_event("schedule.paused").reason == "r"
    assert post(operator, f"/api/schedules/{pk}/resume/").json()["changed"]
    assert operator.delete(f"/api/schedules/{pk}/").status_code == 403
    assert admin.delete(f"/api/schedules/{pk}/").status_code == 204


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "cron", "cron": "61 * * * *"}, "cron"),
    ({"kind": "cron", "cron": "0 3 * * *", "timezone": "Mars/Base"}, "timezone"),
    ({"kind": "interval"}, "interval_seconds"),
    ({"kind": "interval", "interval_seconds": 2**40}, "interval_seconds"),
    ({"kind": "once"}, "run_at"),
])
def test_bad_schedules_are_refused_naming_the_field(admin, shell_job, body, field):
    response = post(admin, "/api/schedules/", {"job": shell_job.pk, **body})
    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert not Schedule.objects.exists()


# ------------------------------------------------------------------ tasks


@pytest.fixture
def task(shell_job):
    return shell_job.run_now("someone")


def test_tasks_list_filters_and_read(viewer, task, shell_job):
    assert viewer.get(f"/api/tasks/?job={shell_job.pk}&state=queued").json()["count"] == 1
    assert viewer.get("/api/tasks/?state=running").json()["count"] == 0
    assert viewer.get("/api/tasks/?since=2000-01-01T00:00:00Z").json()["count"] == 1
    assert viewer.get(f"/api/tasks/{task.pk}/").json()["state"] == "queued"
    response = viewer.get("/api/tasks/?since=yesterday")
    assert response.status_code == 400 and "since" in response.json()["errors"]


def test_task_log_from_a_byte_cursor(viewer, task):
    TaskLog.objects.create(task=task, text="hello ")
    TaskLog.objects.create(task=task, text="wörld\n")
    whole = viewer.get(f"/api/tasks/{task.pk}/log/").json()
    assert whole["text"] == "hello wörld\n" and whole["start"] == 0
    assert whole["end"] == whole["size"] == len("hello wörld\n".encode())
    rest = viewer.get(f"/api/tasks/{task.pk}/log/?cursor=6&limit=3").json()
    assert rest["text"] == "wö" and rest["end"] == 9
    assert viewer.get(f"/api/tasks/{task.pk}/log/?cursor=-1").status_code == 400


def test_cancel_needs_a_reason_and_is_audited(operator, viewer, task):
    assert post(operator, f"/api/tasks/{task.pk}/cancel/").status_code == 400
    assert post(viewer, f"/api/tasks/{task.pk}/cancel/", {"reason": "x"}).status_code == 403
    response = post(operator, f"/api/tasks/{task.pk}/cancel/", {"reason": "stuck"})
    assert response.json()["changed"] is True
    assert response.json()["task"]["state"] == "cancelled"
    event = last_event("task.cancel")
    assert (event.source, event.reason) == ("api", "stuck")


# ------------------------------------------------------------------ chains and orders


def test_chains_are_read(viewer, chain):
    body = viewer.get(f"/api/chains/{chain.pk}/").json()
    assert [n["state"] for n in body["nodes"]] == ["extract", "load", "done", "failed"]


def test_chains_stop_and_start(operator, viewer, chain):
    assert post(viewer, f"/api/chains/{chain.pk}/stop/").status_code == 403
    response = post(operator, f"/api/chains/{chain.pk}/stop/", {"reason": "deploy"})
    assert response.json()["changed"] is True and response.json()["chain"]["stopped"]
    event = last_event("chain.stop")
    assert (event.source, event.reason) == ("api", "deploy")
    assert post(operator, f"/api/chains/{chain.pk}/stop/").json()["changed"] is False
    assert post(operator, f"/api/chains/{chain.pk}/start/").json()["changed"] is True


def test_node_actions_stop_skip_and_activate_a_node(operator, viewer, chain):
    url = f"/api/chains/{chain.pk}/node-action/"
    assert post(viewer, url, {"state": "load", "action": "stopped"}).status_code == 403
    response = post(operator, url, {"state": "load", "action": "stopped", "reason": "fix"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["changed"] is True and body["node"]["action"] == "stopped"
    assert body["detail"] == "node etl:load set to stopped"
    assert ChainNode.objects.get(chain=chain, state="load").action == "stopped"
    event = last_event("node.action")
    assert (event.actor, event.source, event.reason) == ("otto", "api", "fix")
    again = post(operator, url, {"state": "load", "action": "stopped"})
    assert again.json()["changed"] is False
    assert again.json()["detail"] == "node etl:load was already stopped"
    assert post(operator, url, {"state": "extract", "action": "skipped"}).json()["changed"]
    nodes = {n["state"]: n["action"] for n in viewer.get(f"/api/chains/{chain.pk}/")
             .json()["nodes"]}
    assert nodes == {"extract": "skipped", "load": "stopped", "done": "active",
                     "failed": "active"}
    assert post(operator, url, {"state": "load", "action": "active"}).json()["changed"]


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"state": "nowhere", "action": "stopped"}, "state",
     "'nowhere' is not a state of chain etl (states: extract, load, done, failed)"),
    ({"state": "load", "action": "paused"}, "action", "Not a node action"),
    ({"state": "load"}, "action", "required"),
    ({"action": "stopped"}, "state", "required"),
    ({"state": "done", "action": "stopped"}, "action", "is an end node"),
    ({"state": "load", "action": "stopped", "reason": "x" * 501}, "reason", "500"),
    ({"state": "load", "action": "stopped", "node": 1}, "node", "Unknown"),
])
def test_a_bad_node_action_names_the_field_and_changes_nothing(operator, chain, data, field,
                                                               message):
    response = post(operator, f"/api/chains/{chain.pk}/node-action/", data)
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert message in response.json()["detail"]
    assert set(ChainNode.objects.values_list("action", flat=True)) == {"active"}
    assert not Event.objects.filter(kind="node.action").exists()


def test_a_node_action_on_an_unknown_chain_is_a_404(operator, chain):
    response = post(operator, "/api/chains/999999/node-action/",
                    {"state": "load", "action": "stopped"})
    assert response.status_code == 404


def test_add_an_order(operator, viewer, chain):
    assert post(viewer, "/api/orders/", {"chain": chain.pk, "order_id": "o9"}).status_code == 403
    response = post(operator, "/api/orders/", {"chain": chain.pk, "order_id": "o9",
                                               "parameters": {"a": 1}, "reason": "adhoc"})
    assert response.status_code == 201, response.json()
    assert response.json()["state"] == "extract"
    event = last_event("order.add")
    assert (event.source, event.reason) == ("api", "adhoc")
    again = post(operator, "/api/orders/", {"chain": chain.pk, "order_id": "o9"})
    assert again.status_code == 400 and "order_id" in again.json()["errors"]
    bad = post(operator, "/api/orders/", {"chain": chain.pk, "order_id": "o8",
                                          "initial_state": "nowhere"})
    assert bad.status_code == 400 and "initial_state" in bad.json()["errors"]


def test_order_actions_go_through_orderactions(operator, order):
    url = f"/api/orders/{order.pk}"
    response = post(operator, f"{url}/suspend/", {"reason": "hold"})
    assert response.json()["changed"] is True
    assert response.json()["order"]["status"] == "suspended"
    assert last_event("order.suspend").reason == "hold"
    assert post(operator, f"{url}/resume/").json()["changed"] is True
    response = post(operator, f"{url}/move/", {"state": "load"})
    assert response.json()["order"]["state"] == "load"
    assert last_event("order.move").source == "api"
    bad = post(operator, f"{url}/move/", {"state": "nowhere"})
    assert bad.status_code == 400 and "nowhere" in bad.json()["detail"]
    assert post(operator, f"{url}/move/").status_code == 400
    assert post(operator, f"{url}/reset/").json()["order"]["state"] == "extract"
    response = post(operator, f"{url}/remove/", {"reason": "gone"})
    assert response.json()["order"] is None
    assert not Order.objects.exists()
    assert last_event("order.remove").reason == "gone"


def test_orders_list_filter(viewer, order, chain):
    assert viewer.get(f"/api/orders/?chain={chain.pk}&status=waiting").json()["count"] == 1
    assert viewer.get("/api/orders/?status=finished").json()["count"] == 0


# ------------------------------------------------------------------ events


def test_events_since_an_id_for_a_cluster(operator, viewer, shell_job, cluster):
    first = post(operator, f"/api/jobs/{shell_job.pk}/pause/")
    assert first.status_code == 200
    mark = Event.objects.latest("id").pk
    post(operator, f"/api/jobs/{shell_job.pk}/resume/")
    body = viewer.get(f"/api/events/?cluster={cluster.pk}&since={mark}").json()
    assert [e["kind"] for e in body["results"]] == ["job.resumed"]
    assert body["results"][0]["source"] == "api"
    assert viewer.get("/api/events/?since=x").status_code == 400


# ------------------------------------------------------------------ schema and pages


def test_schema_is_served_and_valid_json(db):
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert "/api/jobs/{id}/run-now/" in schema["paths"]
    assert "/api/chains/{id}/node-action/" in schema["paths"]
    assert "/api/clusters/{id}/switchover/" in schema["paths"]


def test_schema_validates_without_warnings(tmp_path):
    from django.core.management import call_command

    # --fail-on-warn: a view drf-spectacular cannot describe fails here, not in a client.
    call_command("spectacular", "--validate", "--fail-on-warn",
                 "--file", str(tmp_path / "schema.yaml"))
    assert "node-action" in (tmp_path / "schema.yaml").read_text()


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_load_nothing_from_the_internet(client, settings, page):
    """Swagger UI and Redoc are drf_spectacular_sidecar's static files, served by WhiteNoise
    with DEBUG off as in a deployment; the pages name no CDN, font or validator."""
    assert settings.DEBUG is False
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert not re.search(r"https?://", html), re.search(r".{40}https?://.{60}", html)
    assets = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert assets, html[:500]
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content), asset


def test_pagination_is_bounded(viewer, cluster):
    for i in range(3):
        Job.objects.create(cluster=cluster, name=f"j{i}", command="true")
    body = viewer.get("/api/jobs/?limit=100000&offset=99999999999999999999").json()
    assert body["results"] == [] and body["count"] == 3
    assert len(viewer.get("/api/jobs/?limit=2").json()["results"]) == 2


def test_the_executors_and_what_they_support_are_listed(viewer):
    rows = viewer.get("/api/executors/").json()
    by_key = {(row["executor"], row["kind"]): row for row in rows}
    assert {("node", "shell"), ("node", "python"), ("node", "task"), ("celery", "shell"),
            ("celery", "python")} <= set(by_key)
    assert ("celery", "task") not in by_key
    assert by_key[("node", "python")]["isolations"] == ["thread", "process"]
    assert by_key[("node", "python")]["data_map"] is True
    assert by_key[("node", "shell")]["data_map"] is False
    assert "Celery worker" in by_key[("celery", "shell")]["runs_on"]
    assert viewer.post("/api/executors/", {}, format="json").status_code in (403, 405)
