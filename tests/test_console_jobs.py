"""The console's jobs pages: the list (search, filters, sort, pages, bad query strings), the
actions (pause, resume, run now; permissions, CSRF, bad ids, the reason in the audit), one
job's page (definition, schedules and their next fires with DST flags, tasks, audit trail)
and the live renderers of the jobs and job topics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.console import live
from scheduler.console.views import jobs as jobs_views
from scheduler.models import Cluster, Event, Job, Schedule, Task
from tests.conftest import add_interval, add_job, client_for, console_user

pytestmark = pytest.mark.django_db

LIST = reverse("console:jobs")
ACTIONS = reverse("console:job_actions")


def detail(job) -> str:
    return reverse("console:job", args=[job.pk])


def add_task(job, state="succeeded", minutes_ago=1, **kw):
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return Task.objects.create(cluster_id=job.cluster_id, job=job, trigger="manual", state=state,
                               scheduled_for=at, started_at=at,
                               finished_at=at + timedelta(seconds=1)
                               if state not in ("queued", "running") else None, **kw)


def row(html: str, job) -> str:
    match = re.search(rf'<tr id="job-{job.pk}".*?</tr>', html, re.S)
    assert match, f"no row of job {job.name}"
    return match.group(0)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


@pytest.fixture
def jobs(cluster):
    alpha = add_job(cluster, "alpha", title="The first")
    beta = add_job(cluster, "beta", kind="shell", command="echo beta")
    gamma = add_job(cluster, "gamma", paused=True)
    add_interval(alpha, 60)
    add_interval(beta, 30)
    return {"alpha": alpha, "beta": beta, "gamma": gamma}


# ------------------------------------------------------------------------------ the list


def test_the_list_shows_every_job_with_its_row_contract(viewer_client, jobs):
    add_task(jobs["alpha"], "failed")
    response = viewer_client.get(LIST)
    assert response.status_code == 200
    html = response.content.decode()
    alpha = row(html, jobs["alpha"])
    assert 'data-paused="false"' in alpha
    assert f'href="{detail(jobs["alpha"])}"' in alpha
    assert "state-failed" in alpha
    task = Task.objects.get(job=jobs["alpha"])
    assert f'href="{reverse("console:task", args=[task.pk])}"' in alpha
    assert "<time datetime=" in alpha  # next fire and last result time
    gamma = row(html, jobs["gamma"])
    assert 'data-paused="true"' in gamma and "never ran" in gamma
    for label, value in (("Pause", "pause"), ("Resume", "resume"), ("Run now", "run_now")):
        assert re.search(rf'<button type="submit" name="action" value="{value}"[^>]*>{label}'
                         r"</button>", alpha)
    assert 'id="bulk-actions"' in html and '<dialog id="confirm-dialog"' in html
    assert 'id="confirm-reason" name="reason"' in html and 'id="confirm-go"' in html
    # The checkbox is the row's only input named job (the row's form names it in its URL).
    assert alpha.count('name="job"') == 1
    assert re.search(rf'<input type="checkbox" name="job" value="{jobs["alpha"].pk}" '
                     r'form="bulk-form"', alpha)
    assert 'ws-connect="/ws/live/?topics=jobs"' in html
    filtered = viewer_client.get(LIST, {"cluster": jobs["alpha"].cluster_id}).content.decode()
    assert f'ws-connect="/ws/live/?topics=jobs:{jobs["alpha"].cluster_id}"' in filtered


def test_a_viewer_sees_the_buttons_disabled_with_the_reason(viewer_client, jobs):
    html = viewer_client.get(LIST).content.decode()
    alpha = row(html, jobs["alpha"])
    buttons = re.findall(r'<button type="submit" name="action"[^>]*>', alpha)
    assert len(buttons) == 3
    assert all("disabled" in b and 'title="Operating needs the operator role' in b
               for b in buttons)


def test_an_operator_sees_the_buttons_enabled(operator_client, jobs):
    html = operator_client.get(LIST).content.decode()
    buttons = re.findall(r'<button type="submit" name="action"[^>]*>', row(html, jobs["beta"]))
    assert buttons and not any("disabled" in b for b in buttons)


def test_search_and_filters_narrow_the_list(viewer_client, jobs):
    def names(query):
        html = viewer_client.get(LIST, query).content.decode()
        return sorted(re.findall(r'<td class="c-name"><a href="[^"]+">([^<]+)</a>', html))

    add_task(jobs["beta"], "failed")
    add_task(jobs["alpha"], "succeeded")
    assert names({}) == ["alpha", "beta", "gamma"]
    assert names({"q": "FIRST"}) == ["alpha"]  # title, any case
    assert names({"q": "amm"}) == ["gamma"]
    assert names({"paused": "paused"}) == ["gamma"]
    assert names({"paused": "active"}) == ["alpha", "beta"]
    assert names({"kind": "shell"}) == ["beta"]
    assert names({"state": "failed"}) == ["beta"]
    assert names({"state": "none"}) == ["gamma"]
    assert names({"cluster": jobs["alpha"].cluster_id, "q": "a"}) == ["alpha", "beta", "gamma"]
    other = Cluster.objects.create(name="other")
    add_job(other, "delta")
    assert names({"cluster": other.pk}) == ["delta"]


def test_sorting_by_next_fire_and_last_result(viewer_client, jobs):
    Schedule.objects.filter(job=jobs["beta"]).update(
        next_fire_at=datetime.now(UTC) + timedelta(seconds=5))
    Schedule.objects.filter(job=jobs["alpha"]).update(
        next_fire_at=datetime.now(UTC) + timedelta(hours=5))
    add_task(jobs["alpha"], minutes_ago=1)
    add_task(jobs["gamma"], minutes_ago=30)

    def order(sort):
        html = viewer_client.get(LIST, {"sort": sort}).content.decode()
        ids = [int(pk) for pk in re.findall(r'<tr id="job-(\d+)"', html)]
        return [Job.objects.get(pk=pk).name for pk in ids]

    assert order("name") == ["alpha", "beta", "gamma"]
    assert order("-name") == ["gamma", "beta", "alpha"]
    assert order("next_fire") == ["beta", "alpha", "gamma"]  # paused: no next fire, last
    assert order("-last_result") == ["alpha", "gamma", "beta"]  # never ran: last
    assert order("last_result") == ["gamma", "alpha", "beta"]


@pytest.mark.parametrize("query, word", [
    ({"sort": "evil"}, "Sort"),
    ({"cluster": "abc"}, "Cluster"),
    ({"cluster": "99999999999999999999999"}, "Cluster"),
    ({"state": "exploded"}, "Last result"),
    ({"kind": "perl"}, "Kind"),
    ({"paused": "maybe"}, "Paused"),
    ({"page": "x"}, "page"),
    ({"page": "-3"}, "page"),
    ({"page": "99999999999999999999999999"}, "page"),
    ({"q": "a\x00b"}, "Search"),
    ({"size": "1e9"}, None),
])
def test_a_bad_query_string_is_ignored_and_named_never_a_500(viewer_client, jobs, query, word):
    response = viewer_client.get(LIST, query)
    assert response.status_code == 200
    html = response.content.decode()
    for job in jobs.values():  # the bad value is dropped, the list still shows
        assert f'id="job-{job.pk}"' in html
    if word:
        assert 'class="problems error" role="alert"' in html
        assert word in html.split('class="problems error"')[1].split("</ul>")[0]


def test_pages_of_the_list_keep_the_filters(viewer_client, cluster):
    for i in range(30):
        add_job(cluster, f"job{i:02d}")
    first = viewer_client.get(LIST, {"size": 25, "q": "job"}).content.decode()
    assert first.count('<tr id="job-') == 25
    assert "Jobs 1–25 of 30" in first
    assert 'href="?size=25&amp;q=job&amp;page=2"' in first
    second = viewer_client.get(LIST, {"size": 25, "q": "job", "page": 2}).content.decode()
    assert second.count('<tr id="job-') == 5 and "job29" in second and "job00" not in second
    past = viewer_client.get(LIST, {"page": 9}).content.decode()
    assert "past the last page" in past


def test_the_list_costs_the_same_queries_for_3_or_30_jobs(viewer_client, cluster):
    def count():
        viewer_client.get(LIST)  # session and permission caches warm alike
        with CaptureQueriesContext(connection) as queries:
            assert viewer_client.get(LIST).status_code == 200
        return len(queries)

    for i in range(3):
        job = add_job(cluster, f"few{i}")
        add_interval(job, 60)
        add_task(job)
    few = count()
    for i in range(27):
        job = add_job(cluster, f"many{i}")
        add_interval(job, 60)
        add_task(job, "failed")
    assert count() == few
    assert few <= 10


def test_an_htmx_request_gets_the_table_only(viewer_client, jobs):
    response = viewer_client.get(LIST, {"q": "alpha"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="jobs-table"')
    assert "<html" not in html and f'id="job-{jobs["alpha"].pk}"' in html


def test_a_job_title_with_a_script_is_escaped(viewer_client, cluster):
    job = add_job(cluster, "xss", title="<script>alert(1)</script>",
                  kind="shell", command="echo '<script>alert(2)</script>'")
    for url in (LIST, detail(job)):
        html = viewer_client.get(url).content.decode()
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(1)" in html
    assert "<pre class=\"command\">echo &#x27;&lt;script&gt;alert(2)" in (
        viewer_client.get(detail(job)).content.decode())


def test_pages_need_login_and_the_view_permission(nobody_client, jobs):
    for url in (LIST, detail(jobs["alpha"])):
        assert Client().get(url).status_code == 302
        assert nobody_client.get(url).status_code == 403


FUZZ = settings(max_examples=40, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FIELDS = ["q", "cluster", "paused", "kind", "state", "sort", "page", "size"]
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["", "0", "-1", "1e999", "99999999999999999999", "name", "-next_fire", "none", "%00"])


@FUZZ
@given(query=st.dictionaries(st.sampled_from(FIELDS), ANY_TEXT, max_size=5))
def test_fuzzed_query_strings_never_fail(viewer_client, jobs, query):
    response = viewer_client.get(LIST, query)
    assert response.status_code == 200


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["action", "job", "reason", "cluster", "next"]),
                              st.lists(ANY_TEXT, max_size=3), max_size=5))
def test_fuzzed_actions_never_fail_and_change_nothing_when_refused(operator_client, jobs,
                                                                   fields):
    before = Event.objects.count()
    response = operator_client.post(ACTIONS, fields)
    assert response.status_code == 302
    said = messages_of(response)[-1]  # this post's (earlier ones were never shown)
    if said.startswith("Nothing was changed."):
        assert Event.objects.count() == before


# ------------------------------------------------------------------------------ actions


def post(client, action, *jobs_, **extra):
    return client.post(ACTIONS, {"action": action, "job": [j.pk for j in jobs_], **extra})


def test_an_operator_pauses_jobs_in_bulk_with_a_reason(operator_client, jobs):
    response = post(operator_client, "pause", jobs["alpha"], jobs["beta"], jobs["gamma"],
                    reason="disk full on the target", next=f"{LIST}?q=a&sort=-name")
    assert response.status_code == 302
    assert response["Location"] == f"{LIST}?q=a&sort=-name"
    assert messages_of(response) == ["2 jobs paused; 1 was already paused"]
    assert Job.objects.filter(paused=True).count() == 3
    events = Event.objects.filter(kind=Event.Kind.JOB_PAUSED).order_by("id")
    assert [e.job_id for e in events] == [jobs["alpha"].pk, jobs["beta"].pk]
    assert all(e.source == "console" and e.reason == "disk full on the target"
               and e.actor == "otto" for e in events)


def test_a_row_form_posts_without_javascript(operator_client, jobs):
    html = operator_client.get(LIST).content.decode()
    action = re.search(r'<form class="job-action row-actions" method="post" action="([^"]+)"',
                       row(html, jobs["beta"])).group(1)
    assert action == f"{ACTIONS}?job={jobs['beta'].pk}"
    response = operator_client.post(action, {"action": "pause", "next": LIST + "?kind=shell"})
    assert response["Location"] == LIST + "?kind=shell"
    assert Job.objects.get(pk=jobs["beta"].pk).paused
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused
    # Ids in the body win over the URL's (the dialog sends them there).
    operator_client.post(action, {"action": "pause", "job": [jobs["alpha"].pk]})
    assert Job.objects.get(pk=jobs["alpha"].pk).paused


def test_resume_and_run_now(operator_client, jobs):
    response = post(operator_client, "resume", jobs["gamma"], jobs["alpha"], reason="fixed")
    assert messages_of(response) == ["1 job resumed; 1 was already active"]
    assert not Job.objects.get(pk=jobs["gamma"].pk).paused
    event = Event.objects.get(kind=Event.Kind.JOB_RESUMED)
    assert (event.source, event.reason, event.job_id) == ("console", "fixed", jobs["gamma"].pk)
    Job.objects.filter(pk=jobs["beta"].pk).update(paused=True)
    response = post(operator_client, "run_now", jobs["alpha"], jobs["beta"])
    tasks = list(Task.objects.filter(trigger="manual").order_by("id"))
    assert [t.job_id for t in tasks] == [jobs["alpha"].pk, jobs["beta"].pk]
    assert all(t.requested_by == "otto" for t in tasks)
    said = messages_of(response)[-2:]  # after the resume's, not shown yet
    assert said[0] == f"2 jobs queued to run now (tasks {tasks[0].pk}, {tasks[1].pk})."
    assert "waits until resumed: beta" in said[1]
    assert response["Location"] == LIST


@pytest.mark.parametrize("jobs_sent, word", [
    (["abc"], "not a job id"),
    (["1; DROP TABLE"], "not a job id"),
    (["99999999999999999999999"], "not a job id"),
    (["999999"], "No job with id 999999"),
    ([], "Select at least one job"),
])
def test_a_bad_job_id_is_refused_and_nothing_changes(operator_client, jobs, jobs_sent, word):
    sent = [jobs["alpha"].pk, *jobs_sent]
    response = operator_client.post(ACTIONS, {"action": "pause", "job": sent if jobs_sent else []})
    assert response.status_code == 302
    said = " ".join(messages_of(response))
    assert said.startswith("Nothing was changed.") and word in said
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused
    assert not Event.objects.filter(kind=Event.Kind.JOB_PAUSED).exists()


def test_a_job_of_another_cluster_is_refused_when_the_list_is_filtered(operator_client, jobs):
    other = Cluster.objects.create(name="other")
    stranger = add_job(other, "stranger")
    response = operator_client.post(ACTIONS, {"action": "pause",
                                              "cluster": jobs["alpha"].cluster_id,
                                              "job": [jobs["alpha"].pk, stranger.pk]})
    assert "Not in the cluster shown: stranger" in " ".join(messages_of(response))
    assert not Job.objects.filter(paused=True).exclude(pk=jobs["gamma"].pk).exists()


@pytest.mark.parametrize("fields, word", [
    ({"action": "delete"}, "not an action"),
    ({"action": ""}, "Choose an action"),
    ({"action": "pause", "reason": "x" * 501}, "at most 500"),
    ({"action": "pause", "reason": "bad \x00 byte"}, "NUL character"),
    ({"action": "pause", "cluster": "abc"}, "not a cluster id"),
])
def test_a_bad_action_or_reason_is_refused(operator_client, jobs, fields, word):
    response = operator_client.post(ACTIONS, {"job": [jobs["alpha"].pk], **fields})
    said = " ".join(messages_of(response))
    assert "Nothing was changed." in said and word in said
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused


@pytest.mark.parametrize("next_url", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)",
    "/jobs/\r\nSet-Cookie: x=1", "",
])
def test_only_a_safe_local_next_is_followed(operator_client, jobs, next_url):
    response = post(operator_client, "pause", jobs["alpha"], next=next_url)
    assert response.status_code == 302 and response["Location"] == LIST


def test_a_viewer_cannot_act_even_with_a_forged_post(viewer_client, nobody_client, jobs):
    for client in (viewer_client, nobody_client):
        response = post(client, "pause", jobs["alpha"], reason="forged")
        assert response.status_code == 403
    assert post(Client(), "pause", jobs["alpha"]).status_code == 302  # to the login page
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused
    assert not Event.objects.exists() or not Event.objects.filter(
        kind=Event.Kind.JOB_PAUSED).exists()


def test_actions_are_post_only(operator_client, jobs):
    response = operator_client.get(ACTIONS, {"action": "pause", "job": jobs["alpha"].pk})
    assert response.status_code == 405
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused


def test_csrf_is_enforced(jobs):
    user = console_user("olga", "operator")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = post(client, "pause", jobs["alpha"])
    assert response.status_code == 403
    assert not Job.objects.get(pk=jobs["alpha"].pk).paused
    # With the token the page gives, the same post goes through.
    html = client.get(LIST).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    response = post(client, "pause", jobs["alpha"], csrfmiddlewaretoken=token)
    assert response.status_code == 302
    assert Job.objects.get(pk=jobs["alpha"].pk).paused


# ------------------------------------------------------------------------------ one job


def test_the_job_page_shows_definition_schedules_tasks_and_audit(operator_client, jobs):
    job = jobs["alpha"]
    task = add_task(job, "failed", exit_code=3)
    post(operator_client, "pause", job, reason="maintenance <b>window</b>")
    response = operator_client.get(detail(job))
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<span id="job-state"[^>]*>paused</span>', html)
    assert 'ws-connect="/ws/live/?topics=job:' + str(job.pk) + '"' in html
    assert '<pre class="command">tests.test_node:noop</pre>' in html
    assert "every 60 s" in html  # Schedule.describe()
    recent = html.split('id="recent-tasks"')[1].split("</section>")[0]
    assert '<tr data-task-state="failed">' in recent
    assert f'href="{reverse("console:task", args=[task.pk])}"' in recent
    audit = html.split('id="audit-title"')[1].split("</section>")[0]
    assert "<td>otto</td>" in audit and "Console" in audit
    assert "maintenance &lt;b&gt;window&lt;/b&gt;" in audit
    for value in ("pause", "resume", "run_now"):
        assert f'name="action" value="{value}"' in html
    assert '<dialog id="confirm-dialog"' in html
    assert "Edit in the admin" not in html  # operators do not edit jobs


def test_the_job_page_shows_where_the_work_runs(viewer_client, cluster, jobs):
    html = viewer_client.get(detail(jobs["alpha"])).content.decode()
    assert "<dt>Executor</dt><dd>node worker pool</dd>" in html
    job = add_job(cluster, "reports", kind="shell", command="true", executor="celery",
                  celery_queue="reports.eu")
    html = viewer_client.get(detail(job)).content.decode()
    assert "<dt>Executor</dt><dd>Celery queue: <code>reports.eu</code></dd>" in html
    Job.objects.filter(pk=job.pk).update(celery_queue="")
    html = viewer_client.get(detail(job)).content.decode()
    assert "<dt>Executor</dt><dd>Celery queue: <code>celery</code></dd>" in html
    assert "a Celery worker consuming the job&#x27;s queue; a timeout stops the work" in html


def test_the_job_page_says_where_the_work_runs_and_what_a_timeout_does(viewer_client, cluster):
    shell = add_job(cluster, "on-node", kind="shell", command="true")
    html = viewer_client.get(detail(shell)).content.decode()
    assert "<dt>Runs on</dt>" in html and "a timeout stops the work" in html
    assert "<dt>Isolation</dt>" not in html  # python jobs only
    # A row saved around the doors, which no executor runs: the page says so, no 500.
    Job.objects.filter(pk=shell.pk).update(executor="celery", kind="task")
    html = viewer_client.get(detail(shell)).content.decode()
    assert "its tasks fail" in html


def test_the_job_page_links_to_the_admin_for_who_may_edit(jobs):
    user = console_user("ada", "administrator")
    user.is_staff = True
    user.save()
    html = client_for(user).get(detail(jobs["alpha"])).content.decode()
    assert reverse("admin:scheduler_job_change", args=[jobs["alpha"].pk]) in html


def test_an_unknown_job_is_404(viewer_client):
    assert viewer_client.get(reverse("console:job", args=[987654])).status_code == 404


def test_the_next_fires_show_the_dst_flags_of_a_berlin_cron_schedule(viewer_client, cluster):
    job = add_job(cluster, "nightly")
    # 2030: summer time starts on Sunday 31 March (02:00 → 03:00), ends Sunday 27 October.
    for start in ("2030-03-28T00:00:00+00:00", "2030-10-24T00:00:00+00:00"):
        schedule = Schedule(job=job, kind="cron", cron="30 2 * * *", timezone="Europe/Berlin",
                            start_at=datetime.fromisoformat(start))
        schedule.full_clean()
        schedule.save()
    html = viewer_client.get(detail(job)).content.decode()
    spring, autumn = html.split('<article class="schedule"')[1:3]
    assert spring.count('<tr class="fire') == 10
    flagged = re.findall(r'<tr class="fire dst">.*?</tr>', spring, re.S)
    assert len(flagged) == 1
    assert "DST gap: 02:30 does not exist on 2030-03-31" in flagged[0]
    assert "Sun 2030-03-31 03:00:00 CEST" in flagged[0]  # the schedule's zone
    assert 'datetime="2030-03-31T01:00:00+00:00"' in flagged[0]  # the viewer's zone (UTC)
    assert "Sat 2030-03-30 02:30:00 CET" in spring
    flagged = re.findall(r'<tr class="fire dst">.*?</tr>', autumn, re.S)
    assert len(flagged) == 1 and "DST repeat: 02:30 occurs twice on 2030-10-27" in flagged[0]


def test_the_viewer_zone_is_used_for_the_times_shown(viewer_client, cluster):
    viewer_client.post(reverse("console:preferences"), {"time_zone": "Asia/Tokyo",
                                                          "theme": "auto"})
    job = add_job(cluster, "tokyo")
    schedule = Schedule(job=job, kind="once",
                        run_at=datetime(2031, 1, 1, 0, 0, tzinfo=UTC))
    schedule.full_clean()
    schedule.save()
    html = viewer_client.get(detail(job)).content.decode()
    fire = re.search(r'<tr class="fire">.*?</tr>', html, re.S).group(0)
    assert "Wed 2031-01-01 00:00:00 UTC" in fire  # the schedule's zone
    assert ">2031-01-01 09:00:00</time>" in fire  # the viewer's


# ------------------------------------------------------------------------------ live


def test_the_renderers_are_registered():
    assert live.RENDERERS["jobs"].render is jobs_views.render_jobs
    assert live.RENDERERS["job"].render is jobs_views.render_job
    assert live.parse_topics("jobs:3,job:4,jobs") == [("jobs", 3), ("job", 4), ("jobs", None)]


def test_the_jobs_renderer_pushes_the_rows_that_moved(jobs):
    add_task(jobs["alpha"], "running")
    jobs["beta"].pause("someone")
    other = Cluster.objects.create(name="other")
    stranger = add_job(other, "stranger")
    add_task(stranger, "failed")
    viewer = live.Viewer(may_operate=False, may_switchover=False)
    html = jobs_views.render_jobs(jobs["alpha"].cluster_id, [viewer])[0]
    assert html.startswith('<div id="jobs-push" hidden hx-swap-oob="true">')
    assert html.count('<div id="jobs-push"') == 1
    assert 'data-paused="false"' in row(html, jobs["alpha"]) and "state-running" in html
    assert 'data-paused="true"' in row(html, jobs["beta"])
    assert f'id="job-{stranger.pk}"' not in html and f'id="job-{jobs["gamma"].pk}"' not in html
    # No action form in a pushed row (it would have no CSRF token): jobs.js keeps the row's.
    assert "<form" not in html and 'class="c-actions"></td>' in row(html, jobs["alpha"])
    viewers = [live.Viewer(may_operate=True, may_switchover=False), viewer]
    everywhere, as_viewer = jobs_views.render_jobs(None, viewers)
    assert f'id="job-{stranger.pk}"' in everywhere and "<form" not in everywhere
    assert f'id="job-{stranger.pk}"' in as_viewer


def test_the_job_renderer_pushes_state_fires_and_tasks(jobs):
    job = jobs["alpha"]
    add_task(job, "running")
    viewer = live.Viewer(may_operate=True, may_switchover=False)
    html = jobs_views.render_job(job.pk, [viewer])[0]
    tops = re.findall(r'^<(\w+) id="([\w-]+)"[^>]*hx-swap-oob="true"', html.strip(), re.M)
    ids = [i for _, i in re.findall(r'<(\w+) id="([\w-]+)"[^>]*hx-swap-oob="true"', html)]
    assert ids == ["job-state", "job-schedules", "recent-tasks"], tops
    assert re.search(r'<span id="job-state"[^>]*>active</span>', html)
    assert '<tr data-task-state="running">' in html
    assert html.count('<tr class="fire') == 10
    job.pause("someone")
    assert re.search(r'<span id="job-state"[^>]*>paused</span>',
                     jobs_views.render_job(job.pk, [viewer])[0])
    assert jobs_views.render_job(987654, [viewer])[0] == ""
