"""Operations: /healthz, the console's /metrics, a member's own metrics port, JSON logs."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request

import pytest
from django.db import connection
from django.utils import timezone

from scheduler.models import Member, Task
from scheduler.ops import logcontext
from tests.conftest import add_interval, add_job, wait_for
from tests.test_settings import manage

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


def log_a_line(ctx):
    """A python job that logs through the standard logging module."""
    logging.getLogger("opscenter.job").warning("hello from the job")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_member(cluster, name, state="active"):
    return Member.objects.create(cluster=cluster, name=name, mode="single", host="h", pid=1,
                                 version="t", state=state)


# ------------------------------------------------------------------ /healthz


def test_healthz_is_ok_without_login_and_says_nothing_sensitive(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert set(body) == {"status", "database", "seconds"}


@pytest.mark.django_db(transaction=True)
def test_healthz_is_503_when_the_database_cannot_be_reached(client, tmp_path):
    # A real failure: the connection is closed and its next open fails (a file in a directory
    # that does not exist; on PostgreSQL a database that does not exist).
    name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = (str(tmp_path / "missing" / "db.sqlite3")
                                        if connection.vendor == "sqlite" else "no_such_db_ops")
    try:
        response = client.get("/healthz")
    finally:
        connection.close()
        connection.settings_dict["NAME"] = name
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "unavailable (OperationalError)"
    assert "missing" not in response.content.decode() and "no_such_db" not in body["database"]
    assert client.get("/healthz").status_code == 200  # and back once it answers again


# ------------------------------------------------------------------ console /metrics


def test_metrics_show_members_tasks_and_lease_epochs(client, cluster):
    cluster.lease_epoch = 7
    cluster.save(update_fields=["lease_epoch"])
    add_member(cluster, "a")
    add_member(cluster, "b", state="standby")
    add_member(cluster, "c", state="dead")
    job = add_job(cluster, "nightly")
    now = timezone.now()
    for state in ("running", "succeeded", "succeeded", "failed"):
        Task.objects.create(cluster=cluster, job=job, scheduled_for=now, trigger="schedule",
                            state=state)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'opscenter_members{cluster="test",state="active"} 1.0' in text
    assert 'opscenter_members{cluster="test",state="standby"} 1.0' in text
    assert 'opscenter_members{cluster="test",state="dead"} 1.0' in text
    assert 'opscenter_tasks_unfinished{cluster="test",state="running"} 1.0' in text
    assert 'opscenter_tasks_recent{cluster="test",job="nightly",state="succeeded"} 2.0' in text
    assert 'opscenter_tasks_recent{cluster="test",job="nightly",state="failed"} 1.0' in text
    assert 'opscenter_lease_epoch{cluster="test"} 7.0' in text


def test_metrics_refuse_a_client_outside_the_allow_list(client, db, settings):
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert b"opscenter" not in response.content
    settings.METRICS_TOKEN = "t" * 32
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION="Bearer " + "t" * 32).status_code == 200


def test_metrics_allow_a_listed_network(client, db, settings):
    import ipaddress

    settings.METRICS_ALLOW = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


# ------------------------------------------------------------------ structured logs


def test_json_log_lines_carry_member_job_and_task():
    logger = logging.getLogger("opscenter.test_ops")
    records: list[str] = []
    handler = logging.Handler()
    handler.addFilter(logcontext.ContextFilter())
    handler.setFormatter(logcontext.JsonFormatter())
    handler.emit = lambda record: records.append(handler.format(record))
    logger.addHandler(handler)
    try:
        logcontext.set_member("blue", "n1")
        with logcontext.task_context("nightly", 42):
            logger.warning("inside %s", "a task")
        logger.info("outside", extra={"fires": 3})
    finally:
        logger.removeHandler(handler)
        logcontext.set_member(None, None)
    inside, outside = (json.loads(line) for line in records)
    assert inside["message"] == "inside a task" and inside["level"] == "WARNING"
    assert inside["logger"] == "opscenter.test_ops" and inside["time"].endswith("+00:00")
    assert (inside["cluster"], inside["member"], inside["job"], inside["task"]) == (
        "blue", "n1", "nightly", 42)
    assert "job" not in outside and "task" not in outside and outside["fires"] == 3


@pytest.mark.parametrize(("env", "message"), [
    ({"OPSCENTER_LOG_FORMAT": "xml"}, "OPSCENTER_LOG_FORMAT='xml' is not a log format"),
    ({"OPSCENTER_METRICS_ALLOW": "10.0.0.0/8,nonsense"},
     "'nonsense' is not an IP address or network"),
    ({"OPSCENTER_METRICS_TOKEN": "short"}, "OPSCENTER_METRICS_TOKEN is too short"),
])
def test_bad_environment_values_are_refused_in_one_line(tmp_path, env, message):
    result = manage("check", env={**env, "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ a member's metrics port


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_member_serves_its_metrics_and_logs_json(cluster, start_node):
    first = add_job(cluster, "first")
    second = add_job(cluster, "second", command="tests.test_ops:log_a_line")
    add_interval(first, 1)
    add_interval(second, 1)
    port = free_port()
    node = start_node("--cluster", "test", "--node", "n1", "--metrics-port", str(port), *FAST,
                      env={"OPSCENTER_LOG_FORMAT": "json"})
    wait_for(lambda: Task.objects.filter(job=second, state="succeeded").count() >= 2,
             timeout=20, message="two fires of the second job")

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    def scraped_with_second():
        text = scrape()
        return text if 'job="second"' in text else None

    text = wait_for(scraped_with_second, timeout=10,
                    message="the second job's outcomes in the member's metrics")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["opscenter_member_fires_claimed_total"] >= 3
    assert values['opscenter_member_task_outcomes_total{job="second",state="succeeded"}'] >= 1
    assert values["opscenter_member_claim_batch_size_count"] >= 1
    assert values["opscenter_member_fire_lateness_seconds_count"] >= 1
    assert values['opscenter_member_info{cluster="test",member="n1",mode="single"}'] == 1
    assert 'opscenter_member_lease_changes_total{change="taken"} 0.0' in text

    lines = [json.loads(line) for line in node.output().splitlines() if line.startswith("{")]
    joined = [x for x in lines if x["message"].startswith("member n1 joined")]
    assert joined and joined[0]["member"] == "n1" and joined[0]["cluster"] == "test"
    from_job = [x for x in lines if x["message"] == "hello from the job"]
    assert from_job, node.output()[-2000:]
    assert from_job[0]["job"] == "second" and from_job[0]["member"] == "n1"
    assert Task.objects.filter(pk=from_job[0]["task"], job=second).exists()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_metrics_port_in_use_ends_the_member_with_status_2(cluster, start_node):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = start_node("--cluster", "test", "--node", "n1", "--metrics-port", str(port))
        assert node.wait(30) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in node.output()
    assert not Member.objects.filter(name="n1").exists()  # it never joined


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_metrics_port_out_of_range_is_refused(cluster, start_node):
    node = start_node("--cluster", "test", "--node", "n1", "--metrics-port", "70000")
    assert node.wait(30) != 0
    assert "is out of range" in node.output()
    node = start_node("--cluster", "test", "--node", "n2", env={"OPSCENTER_METRICS_PORT": "x"})
    assert node.wait(30) != 0
    assert "OPSCENTER_METRICS_PORT='x' is not a whole number" in node.output()


def test_member_metrics_count_lease_changes_claims_and_outcomes(cluster, monkeypatch):
    """A passive member in this process: taking the lease, firing, and losing it to a newer
    epoch show in the member's own registry (read as deltas: it is process-wide)."""
    from datetime import timedelta

    from scheduler.clock import db_now
    from scheduler.models import Cluster, Schedule
    from scheduler.ops import member_metrics
    from scheduler.ops.member_metrics import REGISTRY
    from tests.test_node import drive, finished, make_node

    monkeypatch.setattr(member_metrics, "ENABLED", True)  # as when the member serves them

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    taken, lost = (value("opscenter_member_lease_changes_total", change=c)
                   for c in ("taken", "lost"))
    fires = value("opscenter_member_fires_claimed_total")
    node = make_node(mode="passive", role="primary")
    try:
        drive(node, lambda: node.epoch is not None, message="the primary takes the lease")
        assert value("opscenter_member_lease_changes_total", change="taken") == taken + 1
        job = add_job(cluster, "leased")
        schedule = add_interval(job)
        drive(node, finished(job, 1))
        assert value("opscenter_member_fires_claimed_total") >= fires + 1
        assert value("opscenter_member_task_outcomes_total", job="leased",
                     state="succeeded") >= 1
        Cluster.objects.filter(pk=cluster.pk).update(lease_epoch=node.epoch + 1)
        Schedule.objects.filter(pk=schedule.pk).update(
            next_fire_at=db_now() - timedelta(seconds=1))
        node._next_beat = float("inf")
        node._claim_at = 0.0
        node.step_claim()
        assert node.epoch is None
        assert value("opscenter_member_lease_changes_total", change="lost") == lost + 1
    finally:
        node.stopping = True
        node.shutdown()
