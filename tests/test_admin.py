"""The operator's admin: pages render, actions call the model methods and are recorded with
the user's name, bad input is refused with a clear message and saves nothing, the schedule
preview, chain graph validation, the task log, and no N+1 queries on the big lists."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from scheduler.eventlog import Actor
from scheduler.models import (
    ChainNode,
    Cluster,
    Event,
    Job,
    JobChain,
    Member,
    MisfireRecord,
    Order,
    Schedule,
    Task,
    TaskLog,
)

MODELS = [Cluster, Member, Job, Schedule, Task, MisfireRecord, Event, JobChain, Order]
ADDABLE = {Cluster, Job, Schedule, JobChain, Order}


def url(model, view: str, *args) -> str:
    return reverse(f"admin:scheduler_{model._meta.model_name}_{view}", args=args)


def text(response) -> str:
    """The page as a reader sees it: entities such as &#x27; turned back into characters."""
    return html.unescape(response.content.decode())


def add_member(cluster, name, state="active", **kw) -> Member:
    defaults = {"mode": "single", "host": "host-1", "pid": 4242, "version": "0.1.0"}
    return Member.objects.create(cluster=cluster, name=name, state=state, **{**defaults, **kw})


def add_task(job, member=None, state="succeeded", **kw) -> Task:
    now = timezone.now()
    return Task.objects.create(
        cluster_id=job.cluster_id, job=job, trigger="schedule", state=state,
        scheduled_for=kw.pop("scheduled_for", now), member=member,
        started_at=now if state != "queued" else None,
        finished_at=now + timedelta(seconds=2) if state in Task.FINISHED_STATES else None,
        exit_code=0 if state == "succeeded" else None, **kw,
    )


def add_schedule(job, **kw) -> Schedule:
    schedule = Schedule(job=job, **{"kind": "cron", "cron": "*/5 * * * *", **kw})
    schedule.full_clean()
    schedule.save()
    return schedule


@pytest.fixture
def world(cluster, shell_job):
    """One row of every model, as an operator would find them."""
    live = add_member(cluster, "n1")
    dead = add_member(cluster, "n0", state="dead", pid=1, stop_reason="no heartbeat for 5 s")
    schedule = add_schedule(shell_job)
    task = add_task(shell_job, live, schedule=schedule)
    TaskLog.objects.create(task=task, text="hello <b>world</b>\n")
    now = timezone.now()
    misfire = MisfireRecord.objects.create(
        cluster=cluster, schedule=schedule, first_fire_at=now, last_fire_at=now, fire_count=3,
        policy="skip", reason="skip", member=live)
    chain = JobChain.objects.create(cluster=cluster, name="etl")
    ChainNode.objects.create(chain=chain, state="load", job=shell_job, next_state="done",
                             error_state="error", position=0)
    ChainNode.objects.create(chain=chain, state="done", position=1)
    ChainNode.objects.create(chain=chain, state="error", position=2)
    order = Order.objects.create(chain=chain, order_id="o1", initial_state="load")
    return SimpleNamespace(cluster=cluster, job=shell_job, live=live, dead=dead,
                           schedule=schedule, task=task, misfire=misfire, chain=chain,
                           order=order)


# ---------------------------------------------------------------------------- pages


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_admin_page_renders(admin_client, world, model):
    assert admin_client.get(url(model, "changelist")).status_code == 200
    # What the daemon writes cannot be added by hand.
    assert admin_client.get(url(model, "add")).status_code == (200 if model in ADDABLE else 403)
    obj = model.objects.first()
    assert admin_client.get(url(model, "change", obj.pk)).status_code == 200


def test_the_site_header_names_the_console(admin_client, db):
    assert "opscenter operations" in text(admin_client.get(reverse("admin:index")))


def test_task_log_is_not_registered_on_its_own(admin_client, db):
    assert "tasklog" not in text(admin_client.get(reverse("admin:index"))).lower()


def test_only_stopped_or_dead_members_can_be_deleted(admin_client, world):
    assert admin_client.get(url(Member, "delete", world.live.pk)).status_code == 403
    response = admin_client.post(url(Member, "delete", world.dead.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Member.objects.filter(pk=world.dead.pk).exists()
    assert Member.objects.filter(pk=world.live.pk).exists()


def test_members_show_their_heartbeat_age(admin_client, world):
    Member.objects.filter(pk=world.live.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=42))
    page = text(admin_client.get(url(Member, "changelist")))
    assert "42." in page and " s ago" in page


def test_cluster_list_counts_live_members(admin_client, world):
    add_member(world.cluster, "n2", state="standby")
    response = admin_client.get(url(Cluster, "changelist"))
    assert response.context["cl"].result_list[0].live_count == 2


# ---------------------------------------------------------------------------- job actions


def test_job_actions_pause_resume_and_run_now_record_the_username(admin_client, cluster,
                                                                   shell_job):
    paused = Job.objects.create(cluster=cluster, name="other", command="true", paused=True)
    changelist = url(Job, "changelist")
    selected = [shell_job.pk, paused.pk]

    response = admin_client.post(changelist, {"action": "pause_jobs",
                                              "_selected_action": selected}, follow=True)
    assert "1 job paused; 1 was already paused" in text(response)
    shell_job.refresh_from_db()
    assert shell_job.paused
    assert Event.objects.filter(kind="job.paused", job=shell_job, actor="admin").count() == 1

    response = admin_client.post(changelist, {"action": "resume_jobs",
                                              "_selected_action": selected}, follow=True)
    assert "2 jobs resumed" in text(response)
    assert not Job.objects.filter(paused=True).exists()
    assert Event.objects.filter(kind="job.resumed", actor="admin").count() == 2

    response = admin_client.post(changelist, {"action": "run_jobs_now",
                                              "_selected_action": [shell_job.pk]}, follow=True)
    task = Task.objects.get(job=shell_job)
    assert task.trigger == "manual" and task.state == "queued" and task.requested_by == "admin"
    assert f"1 job queued to run now (task {task.pk})" in text(response).replace(
        f'<a href="{url(Task, "change", task.pk)}">{task.pk}</a>', str(task.pk))
    assert Event.objects.filter(kind="job.run_now", task=task, actor="admin").exists()


def test_run_now_from_the_job_page(admin_client, shell_job):
    page = url(Job, "change", shell_job.pk)
    form = admin_client.get(page).context["action_form"]
    assert "run_jobs_now" in dict(form.fields["action"].choices)
    response = admin_client.post(page, {form["action"].html_name: "run_jobs_now",
                                        "_selected_action": shell_job.pk, "index": 0},
                                 follow=True)
    assert response.redirect_chain[-1][0] == page
    assert Task.objects.filter(job=shell_job, trigger="manual", requested_by="admin").exists()


def test_pausing_a_job_on_its_page_keeps_edits_elsewhere_out(admin_client, shell_job):
    page = url(Job, "change", shell_job.pk)
    name = admin_client.get(page).context["action_form"]["action"].html_name
    admin_client.post(page, {name: "pause_jobs", "_selected_action": shell_job.pk, "index": 0,
                             "title": "not saved by an action"})
    shell_job.refresh_from_db()
    assert shell_job.paused and shell_job.title == ""


# ---------------------------------------------------------------------------- job form


def job_form(cluster, **overrides) -> dict:
    data = {
        "cluster": cluster.pk, "name": "nightly", "title": "", "kind": "shell",
        "command": "echo hi", "working_directory": "", "parameters": "{}", "data_map": "{}",
        "timeout_seconds": "", "max_retries": "0", "retry_backoff_seconds": "10",
        "max_parallel": "1", "overlap_policy": "queue", "recover_lost": "on", "affinity": "",
        "executor": "node", "isolation": "thread",
        "schedules-TOTAL_FORMS": "0", "schedules-INITIAL_FORMS": "0",
        "schedules-MIN_NUM_FORMS": "0", "schedules-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def inline_schedule(index: int, **fields) -> dict:
    base = {"kind": "cron", "title": "", "cron": "0 3 * * *", "timezone": "UTC",
            "interval_seconds": "", "run_at_0": "", "run_at_1": "", "start_at_0": "",
            "start_at_1": "", "end_at_0": "", "end_at_1": "", "misfire_policy": "run_once",
            "misfire_grace_seconds": "5", "run_all_limit": "100"}
    return {f"schedules-{index}-{k}": v for k, v in {**base, **fields}.items()}


def test_a_job_with_schedules_is_added_and_the_events_name_the_user(admin_client, cluster):
    data = job_form(cluster, parameters='{"region": "eu", "days": [1, 2]}',
                    **{"schedules-TOTAL_FORMS": "1"},
                    **inline_schedule(0, cron="30 2 * * *", timezone="Europe/Berlin"))
    response = admin_client.post(url(Job, "add"), data)
    assert response.status_code == 302, text(response)
    job = Job.objects.get(name="nightly")
    assert job.parameters == {"region": "eu", "days": [1, 2]}
    schedule = job.schedules.get()
    assert schedule.next_fire_at is not None and schedule.cluster_id == cluster.pk
    assert Event.objects.get(kind="schedule.created", schedule=schedule).actor == "admin"
    created = Event.objects.get(kind="job.created", job=job)
    assert (created.actor, created.source) == ("admin", "admin")


def test_deleting_a_job_in_the_admin_is_in_the_audit_log(admin_client, cluster):
    job = Job.objects.create(cluster=cluster, name="old", kind="shell", command="true")
    response = admin_client.post(url(Job, "delete", job.pk), {"post": "yes"})
    assert response.status_code == 302, text(response)
    assert not Job.objects.filter(pk=job.pk).exists()
    deleted = Event.objects.get(kind="job.deleted")
    assert (deleted.actor, deleted.source, deleted.message) == ("admin", "admin",
                                                                "job old deleted")
    assert deleted.data == {"job": job.pk, "name": "old"}


@pytest.mark.parametrize(("parameters", "message"), [
    ("{not json", "Invalid JSON: Expecting property name enclosed in double quotes at line 1 "
                  "column 2."),
    ("null", "A data map must be a JSON object"),
    ("[]", "A data map must be a JSON object"),
    ('"text"', "A data map must be a JSON object"),
    ('{"day": null}', "'day': null is not allowed; remove the key instead."),
    ('{"x": NaN}', "NaN and infinity are not allowed"),
])
def test_job_parameters_that_are_not_a_data_map_are_refused(admin_client, cluster, parameters,
                                                            message):
    response = admin_client.post(url(Job, "add"), job_form(cluster, parameters=parameters))
    assert response.status_code == 200
    assert message in text(response)
    assert not Job.objects.exists()


def test_a_python_job_may_run_in_a_process_of_its_own_a_shell_job_is_told_why_not(
        admin_client, cluster):
    response = admin_client.post(url(Job, "add"), job_form(cluster, isolation="process"))
    assert response.status_code == 200
    assert "Only python jobs have an isolation" in text(response)
    assert not Job.objects.exists()
    response = admin_client.post(url(Job, "add"), job_form(
        cluster, kind="python", command="tests.jobs:noop", isolation="process"))
    assert response.status_code == 302, text(response)
    assert Job.objects.get(name="nightly").isolation == "process"


def test_a_celery_job_gets_its_queue_in_the_admin_a_bad_one_is_told_why(admin_client, cluster):
    for queue, message in (("two words", "'two words' is not a valid Celery queue"),
                           ("amq.jobs", "RabbitMQ reserves names starting")):
        response = admin_client.post(url(Job, "add"), job_form(
            cluster, executor="celery", celery_queue=queue))
        assert response.status_code == 200
        assert message in text(response)
    response = admin_client.post(url(Job, "add"), job_form(cluster, celery_queue="reports"))
    assert "Only a job of executor celery has a Celery queue" in text(response)
    assert not Job.objects.exists()
    response = admin_client.post(url(Job, "add"), job_form(
        cluster, executor="celery", celery_queue="reports"))
    assert response.status_code == 302, text(response)
    assert Job.objects.get(name="nightly").celery_queue == "reports"


def test_a_job_data_map_with_null_is_refused_on_change(admin_client, shell_job):
    data = job_form(shell_job.cluster, name="echo", data_map='{"last": null}')
    del data["cluster"]  # read-only once the job exists
    response = admin_client.post(url(Job, "change", shell_job.pk), data)
    assert "'last': null is not allowed" in text(response)
    shell_job.refresh_from_db()
    assert shell_job.data_map == {}


def test_a_job_edit_cannot_pause_or_move_it(admin_client, shell_job):
    other = Cluster.objects.create(name="other")
    data = job_form(other, name="echo", title="Echo", command=shell_job.command, paused="on")
    response = admin_client.post(url(Job, "change", shell_job.pk), data)
    assert response.status_code == 302, text(response)
    shell_job.refresh_from_db()
    # Pausing is an action (it records an event); the cluster is fixed once the job exists.
    assert shell_job.title == "Echo"
    assert not shell_job.paused and shell_job.cluster.name == "test"


def test_a_job_edit_keeps_a_data_map_the_daemon_stored_meanwhile(admin_client, shell_job):
    page = admin_client.get(url(Job, "change", shell_job.pk))
    form = page.context["adminform"].form
    assert 'name="initial-data_map"' in page.content.decode()
    # A stateful run stores its data map while the operator's page is open.
    Job.objects.filter(pk=shell_job.pk).update(data_map={"runs": 7})
    data = job_form(shell_job.cluster, name="echo", title="Echo", command=shell_job.command,
                    data_map=form["data_map"].value(), **{"initial-data_map": "{}",
                                                          "initial-parameters": "{}"})
    response = admin_client.post(url(Job, "change", shell_job.pk), data)
    assert response.status_code == 302, text(response)
    shell_job.refresh_from_db()
    assert shell_job.title == "Echo" and shell_job.data_map == {"runs": 7}


def test_a_bad_schedule_in_the_job_page_saves_nothing(admin_client, cluster):
    data = job_form(cluster, **{"schedules-TOTAL_FORMS": "1"},
                    **inline_schedule(0, cron="61 * * * *"))
    response = admin_client.post(url(Job, "add"), data)
    assert response.status_code == 200
    assert "Invalid cron expression '61 * * * *'" in text(response)
    assert not Job.objects.exists() and not Schedule.objects.exists()


def test_the_job_page_lists_recent_tasks_with_links(admin_client, world):
    page = text(admin_client.get(url(Job, "change", world.job.pk)))
    assert f'href="{url(Task, "change", world.task.pk)}"' in page
    assert "All tasks of this job" in page


# ---------------------------------------------------------------------------- schedule form


def schedule_form(job, **overrides) -> dict:
    data = {"job": job.pk, "kind": "cron", "title": "", "cron": "0 3 * * *", "timezone": "UTC",
            "interval_seconds": "", "run_at_0": "", "run_at_1": "", "start_at_0": "",
            "start_at_1": "", "end_at_0": "", "end_at_1": "", "misfire_policy": "run_once",
            "misfire_grace_seconds": "5", "run_all_limit": "100"}
    data.update(overrides)
    return data


@pytest.mark.parametrize(("fields", "message"), [
    ({"cron": "61 * * * *"}, "Invalid cron expression '61 * * * *'"),
    ({"cron": "* * *"}, "expected 5 fields"),
    ({"timezone": "Mars/Olympus_Mons"}, "Unknown time zone 'Mars/Olympus_Mons'"),
    ({"kind": "interval", "interval_seconds": "0"},
     "Ensure this value is greater than or equal to 1."),
    ({"kind": "interval", "interval_seconds": ""},
     "An interval schedule needs an interval of at least 1 s."),
    ({"kind": "once"}, "A schedule that runs once needs a time."),
    ({"start_at_0": "2026-05-02", "start_at_1": "00:00", "end_at_0": "2026-05-01",
      "end_at_1": "00:00"}, "The end must be after the start."),
])
def test_bad_schedules_are_refused_with_the_message(admin_client, shell_job, fields, message):
    response = admin_client.post(url(Schedule, "add"), schedule_form(shell_job, **fields))
    assert response.status_code == 200
    assert message in text(response)
    assert not Schedule.objects.exists()
    assert not Event.objects.filter(kind__startswith="schedule.").exists()


def test_a_schedule_edit_recomputes_the_next_fire_and_names_the_user(admin_client, world):
    schedule = world.schedule
    response = admin_client.post(url(Schedule, "change", schedule.pk),
                                 schedule_form(world.job, cron="15 4 * * *",
                                               timezone="Asia/Tokyo"))
    assert response.status_code == 302, text(response)
    schedule.refresh_from_db()
    assert schedule.cron == "15 4 * * *" and schedule.version == 2
    local = schedule.next_fire_at.astimezone(timezone.get_fixed_timezone(9 * 60))
    assert (local.hour, local.minute) == (4, 15)
    event = Event.objects.get(kind="schedule.changed", schedule=schedule)
    assert event.actor == "admin"


def test_schedule_actions_pause_and_resume(admin_client, world):
    changelist = url(Schedule, "changelist")
    selected = {"_selected_action": [world.schedule.pk]}
    response = admin_client.post(changelist, {"action": "pause_schedules", **selected},
                                 follow=True)
    assert "1 schedule paused" in text(response)
    world.schedule.refresh_from_db()
    assert world.schedule.paused
    response = admin_client.post(changelist, {"action": "resume_schedules", **selected},
                                 follow=True)
    assert "1 schedule resumed" in text(response)
    kinds = Event.objects.filter(schedule=world.schedule, actor="admin").values_list("kind",
                                                                                     flat=True)
    assert {"schedule.paused", "schedule.resumed"} <= set(kinds)


def test_the_events_of_admin_actions_name_the_admin_as_their_door(admin_client, world):
    admin_client.post(url(Schedule, "change", world.schedule.pk),
                      schedule_form(world.job, cron="15 4 * * *"))
    admin_client.post(url(Schedule, "changelist"), {"action": "pause_schedules",
                                                    "_selected_action": [world.schedule.pk]})
    admin_client.post(url(Job, "changelist"), {"action": "pause_jobs",
                                               "_selected_action": [world.job.pk]})
    admin_client.post(url(Job, "changelist"), {"action": "run_jobs_now",
                                               "_selected_action": [world.job.pk]})
    queued = Task.objects.get(job=world.job, trigger="manual")
    admin_client.post(url(Task, "changelist"), {"action": "cancel_tasks",
                                                "_selected_action": [queued.pk]})
    events = Event.objects.filter(actor="admin")
    assert set(events.values_list("kind", flat=True)) == {
        "schedule.changed", "schedule.paused", "job.paused", "job.run_now", "task.cancel"}
    assert set(events.values_list("source", "reason")) == {("admin", "")}


def test_the_admin_shows_the_partials_it_shares_with_the_console(admin_client, world):
    TaskLog.objects.create(task=world.task, text="<script>alert(1)</script>")
    task_page = admin_client.get(url(Task, "change", world.task.pk)).content.decode()
    assert '<pre class="log">hello &lt;b&gt;world&lt;/b&gt;' in task_page
    assert "<script>alert(1)" not in task_page
    assert "scheduler/admin.css" in task_page
    job_page = admin_client.get(url(Job, "change", world.job.pk)).content.decode()
    assert '<span class="badge state-succeeded">succeeded</span>' in job_page
    assert f'<tr data-task-state="succeeded"><td><a href="{url(Task, "change", world.task.pk)}">' \
        in job_page
    assert 'class="audit-summary"' in job_page and "scheduler/admin.css" in job_page
    assert "background:" not in job_page.split("<body")[1]  # no inline badge colours left
    members = admin_client.get(url(Member, "changelist")).content.decode()
    assert '<span class="badge state-dead">dead</span>' in members
    assert "scheduler/admin.css" in members


def test_the_schedule_page_previews_the_saved_definition(admin_client, shell_job):
    schedule = add_schedule(shell_job, cron="0 12 * * *", timezone="Europe/Berlin")
    response = admin_client.get(url(Schedule, "change", schedule.pk))
    page = text(response)
    assert page.count('<tr class="fire">') == 10
    assert "12:00:00 CE" in page  # CET or CEST, in the schedule's zone
    assert f'data-url="{reverse("admin:scheduler_schedule_preview")}"' in page
    assert "scheduler/schedule_preview.js" in page


def test_the_job_page_previews_each_schedule(admin_client, world):
    page = text(admin_client.get(url(Job, "change", world.job.pk)))
    assert page.count('<tr class="fire">') == 10
    assert "scheduler/schedule_preview.js" in page


# ---------------------------------------------------------------------------- preview view

PREVIEW = "admin:scheduler_schedule_preview"


def test_preview_shows_ten_fires_and_the_dst_gap(admin_client, db):
    response = admin_client.get(reverse(PREVIEW), {
        "kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "now": "2026-03-25T00:00:00Z"})
    page = text(response)
    assert response.status_code == 200
    assert page.count('<tr class="fire">') == 10
    assert "Wed 2026-03-25 02:30:00 CET" in page and "2026-03-25 01:30:00Z" in page
    assert "Sun 2026-03-29 03:00:00 CEST" in page
    assert "DST gap: 02:30 does not exist on 2026-03-29" in page


def test_preview_windows_by_start_at_as_typed_in_the_form(admin_client, db):
    response = admin_client.get(reverse(PREVIEW), {
        "kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "start_at": "2026-03-28 00:00:00", "now": "2026-01-01T00:00:00Z"})
    page = text(response)
    assert "Sat 2026-03-28 02:30:00 CET" in page and "DST gap" in page


def test_preview_of_an_interval_counts_from_its_start(admin_client, db):
    response = admin_client.get(reverse(PREVIEW), {
        "kind": "interval", "interval_seconds": "90", "timezone": "UTC",
        "start_at": "2026-01-01T00:00:00Z", "now": "2026-01-01T00:00:00Z"})
    page = text(response)
    assert page.count('<tr class="fire">') == 10
    assert "2026-01-01 00:00:00Z" in page and "2026-01-01 00:13:30Z" in page


@pytest.mark.parametrize(("query", "message"), [
    ({"kind": "cron", "cron": "99 * * * *"}, "Invalid cron expression '99 * * * *'"),
    ({"kind": "cron", "cron": "0 * * * *", "timezone": "Nowhere/City"},
     "Unknown time zone 'Nowhere/City'"),
    ({"kind": "interval", "interval_seconds": "0"}, "greater than or equal to 1"),
    ({"kind": "once", "run_at": "yesterday"}, "run_at: Enter a valid date/time."),
    ({"kind": "weekly"}, "kind: Select a valid choice."),
])
def test_preview_of_a_bad_definition_says_what_is_wrong(admin_client, db, query, message):
    response = admin_client.get(reverse(PREVIEW), query)
    page = text(response)
    assert response.status_code == 200
    assert message in page and '<tr class="fire">' not in page


def test_preview_is_for_staff_only(client, db):
    response = client.get(reverse(PREVIEW), {"kind": "cron", "cron": "* * * * *"})
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_preview_script_is_served_from_our_static_files():
    from django.contrib.staticfiles import finders

    path = finders.find("scheduler/schedule_preview.js")
    assert path and "schedule-preview" in Path(path).read_text()


# ---------------------------------------------------------------------------- chains, orders


def chain_form(cluster, nodes: list[dict], **overrides) -> dict:
    data = {"cluster": cluster.pk, "name": "etl", "title": "", "max_orders": "",
            "nodes-TOTAL_FORMS": str(len(nodes)), "nodes-INITIAL_FORMS": "0",
            "nodes-MIN_NUM_FORMS": "0", "nodes-MAX_NUM_FORMS": "1000"}
    for i, node in enumerate(nodes):
        fields = {"position": str(i), "job": "", "next_state": "", "error_state": "",
                  "action": "active", **node}
        data.update({f"nodes-{i}-{k}": v for k, v in fields.items()})
    data.update(overrides)
    return data


def test_a_sound_chain_is_saved(admin_client, cluster, shell_job):
    nodes = [{"state": "load", "job": shell_job.pk, "next_state": "done", "error_state": "err"},
             {"state": "done"}, {"state": "err"}]
    response = admin_client.post(url(JobChain, "add"), chain_form(cluster, nodes))
    assert response.status_code == 302, text(response)
    chain = JobChain.objects.get(name="etl")
    assert sorted(chain.nodes.values_list("state", flat=True)) == ["done", "err", "load"]


def test_a_chain_whose_next_state_does_not_exist_is_refused(admin_client, cluster, shell_job):
    nodes = [{"state": "load", "job": shell_job.pk, "next_state": "publish",
              "error_state": "done"}, {"state": "done"}]
    response = admin_client.post(url(JobChain, "add"), chain_form(cluster, nodes))
    assert "Node 'load': next state 'publish' is not a state of this chain." in text(response)
    assert not JobChain.objects.exists() and not ChainNode.objects.exists()


def test_a_chain_with_a_node_that_cannot_reach_an_end_is_refused(admin_client, cluster,
                                                                 shell_job):
    nodes = [{"state": "a", "job": shell_job.pk, "next_state": "b", "error_state": "b"},
             {"state": "b", "job": shell_job.pk, "next_state": "a", "error_state": "a"},
             {"state": "done"}]
    response = admin_client.post(url(JobChain, "add"), chain_form(cluster, nodes))
    page = text(response)
    assert "Node 'a' cannot reach an end node." in page
    assert "Node 'b' cannot reach an end node." in page
    assert not JobChain.objects.exists()


def test_deleting_the_end_node_of_a_chain_is_refused(admin_client, world):
    nodes = list(world.chain.nodes.order_by("position"))
    data = chain_form(world.cluster, [
        {"id": str(n.pk), "chain": str(world.chain.pk), "state": n.state,
         "job": str(n.job_id or ""), "next_state": n.next_state, "error_state": n.error_state}
        for n in nodes
    ], **{"nodes-INITIAL_FORMS": str(len(nodes))})
    del data["cluster"]
    done = next(i for i, n in enumerate(nodes) if n.state == "done")
    data[f"nodes-{done}-DELETE"] = "on"
    response = admin_client.post(url(JobChain, "change", world.chain.pk), data)
    assert "Node 'load': next state 'done' is not a state of this chain." in text(response)
    assert world.chain.nodes.count() == 3


def edit_nodes(admin_client, chain, change: dict, delete=()):
    """Post the chain's page with its nodes as saved, `change` applied ({state: fields})
    and the nodes of `delete` deleted."""
    nodes = list(chain.nodes.order_by("position"))
    data = chain_form(chain.cluster, [
        {"id": str(n.pk), "chain": str(chain.pk), "state": n.state,
         "job": str(n.job_id or ""), "next_state": n.next_state, "error_state": n.error_state,
         **change.get(n.state, {})}
        for n in nodes
    ], **{"nodes-INITIAL_FORMS": str(len(nodes))})
    del data["cluster"]
    for i, n in enumerate(nodes):
        if n.state in delete:
            data[f"nodes-{i}-DELETE"] = "on"
    return admin_client.post(url(JobChain, "change", chain.pk), data)


def test_a_node_that_orders_use_is_not_deleted_or_renamed(admin_client, world):
    states = sorted(world.chain.nodes.values_list("state", flat=True))
    response = edit_nodes(admin_client, world.chain, {"load": {"state": "extract"}})
    assert response.status_code == 200
    assert ("cannot be deleted or renamed: order etl/o1 (at load, starting from load)"
            in html.unescape(text(response)))
    Order.objects.filter(pk=world.order.pk).update(state="error", status="suspended")
    response = edit_nodes(admin_client, world.chain, {"load": {"error_state": "done"}},
                          delete=("error",))
    assert "order etl/o1 (at error)" in html.unescape(text(response))
    assert sorted(world.chain.nodes.values_list("state", flat=True)) == states
    # Once the order is done, the node is renamed; the order cannot be reset to a state that
    # is gone, and is moved instead.
    Order.objects.filter(pk=world.order.pk).update(state="done", status="finished")
    response = edit_nodes(admin_client, world.chain, {"load": {"state": "extract"}})
    assert response.status_code == 302, text(response)
    with pytest.raises(ValidationError, match="initial state 'load' is no longer a state"):
        world.order.reset(Actor("otto"))
    assert world.order.move("extract", Actor("otto")) is True


def test_a_chain_node_with_a_job_of_another_cluster_is_refused(admin_client, cluster):
    elsewhere = Job.objects.create(cluster=Cluster.objects.create(name="other"), name="x",
                                   command="true")
    nodes = [{"state": "load", "job": elsewhere.pk, "next_state": "done",
              "error_state": "done"}, {"state": "done"}]
    response = admin_client.post(url(JobChain, "add"), chain_form(cluster, nodes))
    assert "Node 'load': job 'x' belongs to another cluster" in text(response)
    assert not JobChain.objects.exists()


def test_an_order_must_start_at_a_state_of_its_chain(admin_client, world):
    data = {"chain": world.chain.pk, "order_id": "o2", "title": "", "parameters": "{}",
            "priority": "0", "initial_state": "nowhere", "end_state": ""}
    response = admin_client.post(url(Order, "add"), data)
    assert "'nowhere' is not a state of chain etl" in text(response)
    assert not Order.objects.filter(order_id="o2").exists()
    data["initial_state"] = "load"
    assert admin_client.post(url(Order, "add"), data).status_code == 302
    assert Order.objects.get(order_id="o2").state == "load"


# ---------------------------------------------------------------------------- tasks


def test_the_task_page_shows_its_log_escaped(admin_client, world):
    TaskLog.objects.create(task=world.task, text="second chunk\n")
    page = admin_client.get(url(Task, "change", world.task.pk)).content.decode()
    assert "hello &lt;b&gt;world&lt;/b&gt;\nsecond chunk" in page


def test_the_log_of_a_running_task_is_shown_as_far_as_it_goes(admin_client, world):
    running = add_task(world.job, world.live, state="running")
    TaskLog.objects.create(task=running, text="step 1 of 3\n")
    page = text(admin_client.get(url(Task, "change", running.pk)))
    assert "step 1 of 3" in page and "The task is running" in page


def test_cancel_action_cancels_queued_tasks_and_names_the_user(admin_client, world):
    queued = add_task(world.job, state="queued")
    response = admin_client.post(url(Task, "changelist"), {
        "action": "cancel_tasks", "_selected_action": [queued.pk, world.task.pk]}, follow=True)
    assert "1 task cancelled or asked to stop; 1 was already finished" in text(response)
    queued.refresh_from_db()
    assert queued.state == "cancelled"
    assert Event.objects.get(kind="task.cancel", task=queued).actor == "admin"


def test_unfinished_tasks_cannot_be_deleted(admin_client, world):
    running = add_task(world.job, world.live, state="running")
    assert admin_client.get(url(Task, "delete", running.pk)).status_code == 403
    assert admin_client.get(url(Task, "delete", world.task.pk)).status_code == 200


def count_queries(client, address: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(address).status_code == 200
    return len(ctx.captured_queries)


def test_list_query_counts_do_not_grow_with_the_rows(admin_client, world):
    other = Job.objects.create(cluster=world.cluster, name="other", command="true")
    add_schedule(other, kind="interval", interval_seconds=60)
    members = [world.live, world.dead]
    pages = [url(m, "changelist") for m in (Task, Job, Member, Schedule, Event, MisfireRecord,
                                            Cluster, Order)]
    before = {page: count_queries(admin_client, page) for page in pages}
    for i in range(30):
        add_task([world.job, other][i % 2], members[i % 2])
    for i in range(5):
        extra = Cluster.objects.create(name=f"c{i}")
        add_member(extra, f"m{i}")
        job = Job.objects.create(cluster=extra, name=f"j{i}", command="true")
        add_schedule(job)
        Event.record(extra.pk, "job.paused", message="x", member=Member.objects.last(), job=job)
        MisfireRecord.objects.create(cluster=extra, schedule=job.schedules.get(),
                                     first_fire_at=timezone.now(), last_fire_at=timezone.now(),
                                     fire_count=1, policy="skip", reason="skip",
                                     member=Member.objects.last())
        Order.objects.create(chain=world.chain, order_id=f"o{i + 10}", initial_state="load",
                             member=Member.objects.last())
    after = {page: count_queries(admin_client, page) for page in pages}
    # The task and member filters list members (one query each), never one per task.
    assert after == before


def test_the_task_list_filters_by_state_member_and_job(admin_client, world):
    other = Job.objects.create(cluster=world.cluster, name="other", command="true")
    add_task(other, world.dead, state="failed")
    response = admin_client.get(url(Task, "changelist"), {"state__exact": "failed"})
    assert [t.state for t in response.context["cl"].result_list] == ["failed"]
    response = admin_client.get(url(Task, "changelist"), {"member__id__exact": world.live.pk})
    assert [t.pk for t in response.context["cl"].result_list] == [world.task.pk]
    page = text(admin_client.get(url(Task, "changelist")))
    assert "test / echo" in page and "n1@test" in page
    response = admin_client.get(url(Task, "changelist"), {"job__id__exact": other.pk})
    assert [t.job.name for t in response.context["cl"].result_list] == ["other"]


def test_the_event_list_is_newest_first_and_searchable(admin_client, world):
    first = Event.record(world.cluster.pk, "job.paused", message="first needle")
    second = Event.record(world.cluster.pk, "job.resumed", message="second needle")
    response = admin_client.get(url(Event, "changelist"), {"q": "needle"})
    assert [e.pk for e in response.context["cl"].result_list] == [second.pk, first.pk]


def test_switch_over_action_reports_a_refusal(admin_client, world):
    response = admin_client.post(url(Cluster, "changelist"), {
        "action": "switch_over", "_selected_action": [world.cluster.pk]}, follow=True)
    assert "Cluster test: cluster 'test' is not a passive cluster" in text(response)


def test_switch_over_action_asks_the_active_member_to_hand_over(admin_client, cluster):
    Cluster.objects.filter(pk=cluster.pk).update(mode="passive")
    add_member(cluster, "backup", mode="passive", role="backup")
    primary = add_member(cluster, "primary", state="standby", mode="passive", role="primary")
    response = admin_client.post(url(Cluster, "changelist"), {
        "action": "switch_over", "_selected_action": [cluster.pk]}, follow=True)
    assert "switch-over to primary requested" in text(response)
    cluster.refresh_from_db()
    assert cluster.handover_to_id == primary.pk
    assert Event.objects.get(kind="switchover.requested").actor == "admin"


def test_preview_now_parameter_is_optional(admin_client, db):
    response = admin_client.get(reverse(PREVIEW), {"kind": "once",
                                                   "run_at": (datetime.now(UTC) + timedelta(
                                                       days=1)).isoformat()})
    assert text(response).count('<tr class="fire">') == 1


# ---------------------------------------------------------------------------- the calendar's end


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/Adak"])
def test_a_once_schedule_at_the_end_of_the_calendar_keeps_its_pages(admin_client, shell_job,
                                                                   zone):
    # Saved before the doors refused such a date: its own pages must still open.
    schedule = add_schedule(shell_job, kind="once", cron="", timezone=zone,
                            run_at=timezone.now() + timedelta(days=1))
    Schedule.objects.filter(pk=schedule.pk).update(
        run_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    for page in (url(Schedule, "change", schedule.pk), url(Job, "change", shell_job.pk),
                 url(Schedule, "changelist")):
        assert admin_client.get(page).status_code == 200, page
    preview = admin_client.get(reverse("admin:scheduler_schedule_preview"), {
        "kind": "once", "run_at": "9999-12-31 23:59:59", "timezone": zone,
        "now": "9999-12-31 23:59:59"})
    assert preview.status_code == 200


def test_a_schedule_at_the_end_of_the_calendar_is_refused(admin_client, shell_job):
    response = admin_client.post(url(Schedule, "add"), schedule_form(
        shell_job, kind="once", cron="", run_at_0="9999-12-31", run_at_1="23:59:59"))
    assert response.status_code == 200
    assert "Give a date between the years 2 and 9998." in text(response)
    assert not Schedule.objects.exists()
