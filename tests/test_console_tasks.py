"""The console's task pages: the list with filters and keyset pages, one task's page with its
cancel button, and its log (head and tail, reads from a byte cursor, download)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from scheduler import tasklogs
from scheduler.console import live
from scheduler.console.paging import keyset_page
from scheduler.console.views.tasks import render_task
from scheduler.ledger import write_logs
from scheduler.models import Event, Job, Member, Task, TaskLog
from tests.conftest import client_for, console_user

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_task(job, state="succeeded", at=T0, **kw):
    return Task.objects.create(cluster_id=job.cluster_id, job=job, state=state,
                               trigger=kw.pop("trigger", "manual"), scheduled_for=at, **kw)


@pytest.fixture
def job(shell_job):
    return shell_job


@pytest.fixture
def member(cluster):
    return Member.objects.create(cluster=cluster, name="node-a", mode="single", host="h1",
                                 ip="10.0.0.1", pid=42, version="1", state="active")


# ------------------------------------------------------------------ the list


def test_the_list_shows_rows_with_their_state(viewer_client, job, member):
    ok = make_task(job, "succeeded", member=member, exit_code=0,
                   started_at=T0 + timedelta(seconds=1), finished_at=T0 + timedelta(seconds=3))
    running = make_task(job, "running", at=T0 + timedelta(minutes=1))
    page = viewer_client.get(reverse("console:tasks"))
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="task-{ok.pk}" data-task-state="succeeded"' in html
    assert f'id="task-{running.pk}" data-task-state="running"' in html
    assert html.index(f"task-{running.pk}") < html.index(f"task-{ok.pk}")  # newest first
    assert "2.000 s" in html  # duration
    assert "node-a" in html


def test_filters_by_state_job_member_trigger_and_time(viewer_client, cluster, job, member):
    other = Job.objects.create(cluster=cluster, name="other", kind="shell", command="true")
    a = make_task(job, "failed", member=member)
    b = make_task(job, "succeeded", at=T0 + timedelta(hours=1))
    c = make_task(other, "failed", at=T0 + timedelta(hours=2), trigger="retry")

    def ids(**params):
        response = viewer_client.get(reverse("console:tasks"), params)
        assert response.status_code == 200, response.content
        return {t.pk for t in response.context["page"].rows}

    assert ids(state=["failed"]) == {a.pk, c.pk}
    assert ids(state=["failed", "succeeded"]) == {a.pk, b.pk, c.pk}
    assert ids(job=job.name) == {a.pk, b.pk}
    assert ids(job=job.name[1:-1].upper()) == {a.pk, b.pk}  # a part of the name, any case
    assert ids(job="oth") == {c.pk}
    assert ids(job="no such job") == set()
    assert ids(member="node-a") == {a.pk}
    assert ids(trigger="retry") == {c.pk}
    assert ids(cluster=cluster.pk) == {a.pk, b.pk, c.pk}
    # The time range is in the viewer's zone (the install's TIME_ZONE here: UTC by default).
    assert ids(scheduled_from="2026-03-01T12:30", scheduled_to="2026-03-01T14:00") == {b.pk, c.pk}


def test_the_time_range_is_read_in_the_viewers_zone(db, job):
    from scheduler.models import ConsolePreference

    user = console_user("zed", "viewer")
    ConsolePreference.objects.create(user=user, time_zone="Europe/Berlin")
    task = make_task(job, at=T0)  # 13:00 in Berlin
    client = client_for(user)
    url = reverse("console:tasks")
    rows = client.get(url, {"scheduled_from": "2026-03-01T12:30"}).context["page"].rows
    assert [t.pk for t in rows] == [task.pk]
    assert client.get(url, {"scheduled_from": "2026-03-01T13:30"}).context["page"].rows == []


@pytest.mark.parametrize("params", [
    {"scheduled_from": "yesterday"}, {"scheduled_to": "2026-13-45T99:00"},
    {"scheduled_from": "2026-03-02T00:00", "scheduled_to": "2026-03-01T00:00"},
    {"job": "abc"}, {"job": "999999"}, {"job": "x" * 500}, {"job": "a\x00b"},
    {"state": "exploded"}, {"cluster": "-1"},
    {"trigger": "<script>"}, {"after": "garbage"}, {"before": "~x"}, {"size": "1e9"},
    {"member": "x" * 500},
])
def test_bad_query_strings_get_a_clear_message_never_a_500(viewer_client, job, params):
    make_task(job)
    response = viewer_client.get(reverse("console:tasks"), params)
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert b"These filters cannot be used" in response.content
    assert b"<script>" not in response.content.split(b"</head>")[1].replace(
        b'<script src=', b"")  # nothing echoed unescaped


def test_the_job_filter_is_a_name_box_not_a_list_of_every_job(viewer_client, cluster, job):
    for i in range(30):
        Job.objects.create(cluster=cluster, name=f"many-{i}", kind="shell", command="true")
    html = viewer_client.get(reverse("console:tasks")).content.decode()
    assert "many-7" not in html
    assert 'name="job"' in html


def test_an_htmx_request_gets_the_list_partial_only(viewer_client, job):
    make_task(job)
    response = viewer_client.get(reverse("console:tasks"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="task-list">')
    assert "<html" not in html


def test_keyset_pages_of_100000_tasks_are_exact_and_cost_the_same_queries(viewer_client, job):
    """Bulk-made 100,000 rows (a quarter of them at the same instant): walking every page
    forward gives every row once, newest first; the page view costs the same number of
    queries at any depth, and its page boundaries are the walk's."""
    total = 100_000
    rows = [Task(cluster_id=job.cluster_id, job=job, trigger="schedule", state="succeeded",
                 scheduled_for=T0 + timedelta(seconds=(i if i % 4 else 0)), attempt=1)
            for i in range(total)]
    for start in range(0, total, 10_000):
        Task.objects.bulk_create(rows[start:start + 10_000])
    expected = list(Task.objects.order_by("-id").values_list("id", flat=True))

    # Every page, as the view pages them (the same queryset and keyset).
    cursors, seen, after = [None], [], None
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        while True:
            page = keyset_page(Task.objects.select_related("job", "schedule", "member", "cluster"),
                               descending=True, after=after, size=200)
            seen.extend(t.pk for t in page.rows)
            if page.after is None:
                break
            after = page.after
            cursors.append(after)
    elapsed = time.perf_counter() - started
    print(f"\n{len(cursors)} pages of 200 of 100,000 tasks: {elapsed:.2f} s "
          f"({elapsed / len(cursors) * 1000:.1f} ms a page, queries only)")
    assert seen == expected
    assert len(queries) == len(cursors) == 500  # one query a page

    # The view, at several depths: same query count, same boundaries.
    url = reverse("console:tasks")
    counts = []
    for number in (0, 1, 250, 498, 499):
        query = {"size": 200} if cursors[number] is None else {"size": 200,
                                                               "after": cursors[number]}
        with CaptureQueriesContext(connection) as queries:
            response = viewer_client.get(url + "?" + urlencode(query))
        counts.append(len(queries))
        ids = [t.pk for t in response.context["page"].rows]
        assert ids == expected[number * 200:(number + 1) * 200]
        html = response.content.decode()
        assert ("rel=\"next\"" in html) == (number < 499)
        assert ("rel=\"prev\"" in html) == (number > 0)
    assert len(set(counts)) == 1, counts
    # And back from the last page: the page before it is the 499th.
    last = viewer_client.get(url + "?" + urlencode({"size": 200, "after": cursors[499]}))
    back = viewer_client.get(url + "?" + urlencode({"size": 200,
                                                    "before": last.context["page"].before}))
    assert [t.pk for t in back.context["page"].rows] == expected[498 * 200:499 * 200]
    # A deep filtered page: the 25,000 rows at T0, highest id first.
    response = viewer_client.get(url, {"size": 50, "state": "succeeded",
                                       "scheduled_to": "2026-03-01T12:00:00"})
    at_t0 = list(Task.objects.filter(scheduled_for=T0).order_by("-id")
                 .values_list("id", flat=True)[:50])
    assert [t.pk for t in response.context["page"].rows] == at_t0


# ------------------------------------------------------------------ one task


def test_the_task_page_shows_state_times_and_retry_chain_both_ways(viewer_client, job, member):
    first = make_task(job, "failed", member=member, exit_code=3, error="boom <b>bold</b>",
                      started_at=T0, finished_at=T0 + timedelta(seconds=2))
    second = make_task(job, "succeeded", attempt=2, retry_of=first, trigger="retry",
                       parameters={"who": "wörld"})
    page = viewer_client.get(reverse("console:task", args=[first.pk])).content.decode()
    assert 'id="task-state"' in page and 'data-task-state="failed"' in page
    assert f'href="/tasks/{second.pk}/"' in page  # retried by
    assert "boom &lt;b&gt;bold&lt;/b&gt;" in page
    assert 'id="task-exit-code">3<' in page
    assert 'ws-connect="/ws/live/?topics=task:' + str(first.pk) in page
    page = viewer_client.get(reverse("console:task", args=[second.pk])).content.decode()
    assert f'retry of <a href="/tasks/{first.pk}/">' in page
    assert "wörld" in page
    for label in ("Created", "Claimed", "Started", "Finished", "Lost", "Ran unowned", "Lateness"):
        assert f"<dt>{label}</dt>" in page


def test_an_unknown_task_is_404(viewer_client):
    assert viewer_client.get("/tasks/99999/").status_code == 404
    assert viewer_client.get("/tasks/99999/log/?cursor=0").status_code == 404
    assert viewer_client.get("/tasks/99999/log/download/").status_code == 404


def test_a_log_line_with_a_script_tag_shows_as_text(viewer_client, job):
    task = make_task(job, "succeeded")
    write_logs([(task.pk, "<script>alert(1)</script>\n")])
    page = viewer_client.get(reverse("console:task", args=[task.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page


# ------------------------------------------------------------------ cancel


def test_an_operator_cancels_a_queued_task_with_a_reason(db, job):
    task = make_task(job, "queued")
    client = Client(enforce_csrf_checks=True)
    client.force_login(console_user("otto", "operator"))
    page = client.get(reverse("console:task", args=[task.pk]))
    token = page.cookies["csrftoken"].value
    assert b">Cancel</button>" in page.content
    response = client.post(reverse("console:task_cancel", args=[task.pk]),
                           {"reason": "wrong day", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.state == "cancelled"
    event = Event.objects.get(kind=Event.Kind.TASK_CANCEL)
    assert (event.actor, event.source, event.reason) == ("otto", "console", "wrong day")


def test_a_running_task_gets_a_cancel_request(operator_client, job):
    task = make_task(job, "running")
    operator_client.post(reverse("console:task_cancel", args=[task.pk]), {"reason": "stuck"})
    task.refresh_from_db()
    assert (task.state, task.cancel_reason) == ("running", "stuck")


def test_a_cancel_without_csrf_token_is_refused(db, job):
    task = make_task(job, "queued")
    client = Client(enforce_csrf_checks=True)
    client.force_login(console_user("otto", "operator"))
    response = client.post(reverse("console:task_cancel", args=[task.pk]), {"reason": "x"})
    assert response.status_code == 403
    task.refresh_from_db()
    assert task.state == "queued"


def test_a_viewer_sees_a_disabled_cancel_and_a_forged_post_is_403(viewer_client, job):
    task = make_task(job, "running")
    page = viewer_client.get(reverse("console:task", args=[task.pk])).content.decode()
    assert 'class="danger" disabled title="Operating needs the operator role' in page
    response = viewer_client.post(reverse("console:task_cancel", args=[task.pk]), {"reason": "x"})
    assert response.status_code == 403
    task.refresh_from_db()
    assert task.cancel_reason == "" and not Event.objects.exists()


def test_nobody_gets_403_everywhere(nobody_client, job):
    task = make_task(job, "running")
    for url in (reverse("console:tasks"), reverse("console:task", args=[task.pk]),
                reverse("console:task_log", args=[task.pk]) + "?cursor=0",
                reverse("console:task_log_download", args=[task.pk])):
        assert nobody_client.get(url).status_code == 403, url
    assert nobody_client.post(reverse("console:task_cancel", args=[task.pk]),
                              {"reason": "x"}).status_code == 403


def test_cancelling_a_finished_task_says_so_and_changes_nothing(operator_client, job):
    task = make_task(job, "succeeded")
    response = operator_client.post(reverse("console:task_cancel", args=[task.pk]),
                                    {"reason": "late"}, follow=True)
    assert "nothing to cancel" in response.content.decode()
    task.refresh_from_db()
    assert (task.state, task.cancel_reason) == ("succeeded", "")
    assert not Event.objects.exists()


@pytest.mark.parametrize("reason, said", [
    ("  ", "Give a reason"),
    ("stuck \x00 here", "NUL character"),
    ("x" * 501, "at most 500"),
])
def test_a_bad_cancel_reason_is_a_400_that_changes_nothing(operator_client, job, reason, said):
    """A NUL reached PostgreSQL as a 500; the reason was cut at 200 characters silently."""
    task = make_task(job, "running")
    response = operator_client.post(reverse("console:task_cancel", args=[task.pk]),
                                    {"reason": reason})
    assert response.status_code == 400
    html = response.content.decode()
    assert said in html and "Nothing was changed." in html
    task.refresh_from_db()
    assert (task.state, task.cancel_reason) == ("running", "")
    assert not Event.objects.exists()


def test_every_console_action_cleans_its_reason_alike():
    from scheduler.console import forms

    for form_class, extra in ((forms.CancelForm, {}), (forms.SwitchoverForm, {"target": ""}),
                              (forms.JobActionForm, {"action": "pause", "job": "1"})):
        for reason, said in (("lone \ud800 surrogate", "lone surrogate"),
                             ("nul \x00", "NUL character"), ("x" * 501, "at most 500")):
            form = form_class({**extra, "reason": reason})
            assert not form.is_valid()
            assert said in " ".join(form.errors.get("reason", [])), (form_class, reason)
        assert form_class.base_fields["reason"].max_length == forms.MAX_REASON == 500


def test_cancel_is_post_only(operator_client, job):
    task = make_task(job, "queued")
    assert operator_client.get(reverse("console:task_cancel", args=[task.pk])).status_code == 405


# ------------------------------------------------------------------ live


def test_the_task_renderer_pushes_state_times_and_exit_code(job):
    task = make_task(job, "running")
    html = render_task(task.pk, [live.Viewer(may_operate=True, may_switchover=False)])[0]
    assert 'id="task-state"' in html and 'hx-swap-oob="true"' in html
    assert 'data-task-state="running"' in html and 'data-ended="false"' in html
    Task.objects.filter(pk=task.pk).update(state="failed", exit_code=7)
    html = render_task(task.pk, [live.Viewer(may_operate=False, may_switchover=False)])[0]
    assert 'data-task-state="failed"' in html and 'id="task-exit-code">7<' in html
    assert 'data-ended="true"' in html
    assert html.count('hx-swap-oob="true"') == 2
    assert render_task(999999, [live.Viewer(False, False)]) == [""]
    assert live.RENDERERS["task"].render is render_task


def test_a_push_never_replaces_the_cancel_form_and_its_csrf_token(job):
    """The snapshot on connect used to replace the page's Cancel form with one rendered
    without a request: no CSRF token, every cancel then 403."""
    task = make_task(job, "running")
    client = Client(enforce_csrf_checks=True)
    client.force_login(console_user("olga", "operator"))
    page = client.get(reverse("console:task", args=[task.pk])).content.decode()
    assert 'id="task-actions"' in page and "csrfmiddlewaretoken" in page
    for may_operate in (True, False):
        pushed = render_task(task.pk, [live.Viewer(may_operate, False)])[0]
        assert "<form" not in pushed and 'id="task-actions"' not in pushed
    # The page's own form posts (with its token) after any number of pushes.
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("console:task_cancel", args=[task.pk]),
                           {"reason": "stuck", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Task.objects.get(pk=task.pk).cancel_reason == "stuck"


# ------------------------------------------------------------------ the log


def log_chunks():
    """Chunks with multi-byte characters (2, 3 and 4 bytes) and a boundary in every place."""
    return ["héllo ", "wörld\n", "€", "𝄞 clef\n", "", "ascii only\n", "日本語\n" * 3, "ä"]


def test_reads_from_every_cursor_give_exactly_the_concatenation(viewer_client, job):
    task = make_task(job, "running")
    whole = ""
    for chunk in log_chunks():
        write_logs([(task.pk, chunk)])
        whole += chunk
    data = whole.encode()
    assert tasklogs.size(task.pk) == len(data)
    boundaries = [i for i in range(len(data) + 1)
                  if i == len(data) or (data[i] & 0xC0) != 0x80]
    url = reverse("console:task_log", args=[task.pk])
    for cursor in boundaries:
        body = viewer_client.get(url, {"cursor": cursor}).json()
        assert body["text"] == data[cursor:].decode(), cursor
        assert body["cursor"] == len(data) and body["ended"] is False
    # Following from 0 with small reads also gives the concatenation.
    for limit in (1, 2, 3, 5, 7):
        cursor, text = 0, ""
        while cursor < len(data):
            piece = tasklogs.read(task.pk, cursor, limit)
            assert piece.end > cursor or limit < 4
            if piece.end == cursor:  # a limit smaller than the next character
                piece = tasklogs.read(task.pk, cursor, 4)
            text += piece.text
            cursor = piece.end
        assert text == whole


def test_appending_while_following_gives_the_concatenation(viewer_client, job):
    task = make_task(job, "running")
    url = reverse("console:task_log", args=[task.pk])
    cursor, seen, whole = 0, "", ""
    for chunk in log_chunks() * 3:
        write_logs([(task.pk, chunk), (task.pk, chunk)])  # two chunks of a task in one batch
        whole += chunk * 2
        body = viewer_client.get(url, {"cursor": cursor}).json()
        seen += body["text"]
        cursor = body["cursor"]
    assert seen == whole == task.log_text()
    Task.objects.filter(pk=task.pk).update(state="succeeded")
    body = viewer_client.get(url, {"cursor": cursor}).json()
    assert body == {"text": "", "cursor": cursor, "skipped": 0, "ended": True,
                    "state": "succeeded"}


def test_a_cursor_inside_a_character_starts_at_the_next_one(job):
    task = make_task(job)
    write_logs([(task.pk, "a€b")])  # € is 3 bytes: 1..3
    assert tasklogs.read(task.pk, 2, 100).text == "b"
    assert tasklogs.read(task.pk, 0, 2).text == "a"  # never half a character


def test_chunks_saved_one_by_one_and_old_rows_without_offsets_are_read_alike(job):
    task = make_task(job)
    TaskLog.objects.create(task=task, text="one €\n")
    TaskLog.objects.create(task=task, text="two\n")
    assert list(TaskLog.objects.values_list("end_offset", flat=True)) == [8, 12]
    TaskLog.objects.bulk_create([TaskLog(task=task, text="three\n")])  # no offset: legacy
    assert tasklogs.size(task.pk) == 18
    assert tasklogs.read(task.pk, 8, 100).text == "two\nthree\n"


@pytest.mark.parametrize("cursor", ["-1", "abc", "1.5", "", "99999999999999999999", "100", "٣"])
def test_bad_cursors_get_a_clear_400(viewer_client, job, cursor):
    task = make_task(job, "running")
    write_logs([(task.pk, "short\n")])
    response = viewer_client.get(reverse("console:task_log", args=[task.pk]), {"cursor": cursor})
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]
    assert viewer_client.get(reverse("console:task_log", args=[task.pk])).status_code == 400


def test_a_big_gap_is_skipped_to_the_tail(viewer_client, job):
    task = make_task(job, "running")
    write_logs([(task.pk, "x" * 1000 + "\n") for _ in range(1000)])
    body = viewer_client.get(reverse("console:task_log", args=[task.pk]), {"cursor": 0}).json()
    assert body["cursor"] == 1001 * 1000
    assert body["skipped"] == 1001 * 1000 - tasklogs.TAIL_BYTES
    assert len(body["text"].encode()) == tasklogs.TAIL_BYTES


def make_big_log(task, megabytes: int, chunk_bytes: int = 256 * 1024) -> int:
    line = ("line of output ü " * 8)[:-1] + "\n"
    chunk = line * (chunk_bytes // len(line.encode()))
    size = 0
    batch = []
    for _ in range(megabytes * 1024 * 1024 // len(chunk.encode())):
        batch.append((task.pk, chunk))
        if len(batch) == 40:
            write_logs(batch)
            size += sum(len(c.encode()) for _, c in batch)
            batch = []
    write_logs(batch)
    size += sum(len(c.encode()) for _, c in batch)
    return size


def test_a_200_mb_log_opens_small_and_downloads_whole(viewer_client, job):
    task = make_task(job, "running")
    size = make_big_log(task, 200)
    Task.objects.filter(pk=task.pk).update(state="succeeded")
    started = time.perf_counter()
    page = viewer_client.get(reverse("console:task", args=[task.pk]))
    elapsed = time.perf_counter() - started
    print(f"\n200 MB log ({TaskLog.objects.count()} chunks): the task page in "
          f"{elapsed * 1000:.0f} ms, {len(page.content) / 1024:.0f} KiB")
    assert page.status_code == 200
    assert len(page.content) < 400 * 1024
    html = page.content.decode()
    hidden = size - tasklogs.HEAD_BYTES - tasklogs.TAIL_BYTES
    assert f"… {hidden / 1_000_000:.1f} MB not shown" in html
    assert f'data-cursor="{size}"' in html
    # The download streams the whole log, chunk by chunk.
    response = viewer_client.get(reverse("console:task_log_download", args=[task.pk]))
    assert response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="task-{task.pk}.log"'
    total = 0
    biggest = 0
    for piece in response.streaming_content:
        total += len(piece)
        biggest = max(biggest, len(piece))
    assert total == size
    assert biggest <= 256 * 1024


def test_head_and_tail_join_the_log_when_it_is_small(job):
    task = make_task(job)
    write_logs([(task.pk, "a" * 100), (task.pk, "b" * 100)])
    whole = tasklogs.head_and_tail(task.pk, head=150, tail=100)
    assert (whole.head, whole.tail, whole.hidden) == ("a" * 100 + "b" * 100, "", 0)
    cut = tasklogs.head_and_tail(task.pk, head=50, tail=60)
    assert (cut.head, cut.tail, cut.hidden, cut.size) == ("a" * 50, "b" * 60, 90, 200)


def test_the_download_of_a_small_log_is_the_log(viewer_client, job):
    task = make_task(job)
    write_logs([(task.pk, c) for c in log_chunks()])
    response = viewer_client.get(reverse("console:task_log_download", args=[task.pk]))
    assert b"".join(response.streaming_content).decode() == "".join(log_chunks())


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_download_streams_with_an_async_iterator(job):
    """Django reads a sync iterator whole before sending it under ASGI: the view gives an
    async one there, fetched batch by batch."""
    import asyncio

    from django.test import AsyncClient

    task = make_task(job)
    write_logs([(task.pk, f"chunk {i} ü\n") for i in range(40)])  # several batches
    user = console_user("vera", "viewer")

    async def download():
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(reverse("console:task_log_download", args=[task.pk]))
        assert response.is_async
        return b"".join([piece async for piece in response.streaming_content])

    assert asyncio.run(download()).decode() == "".join(f"chunk {i} ü\n" for i in range(40))


def test_keyset_pages_by_id_both_ways_and_forgive_bad_cursors(job):
    ids = [make_task(job).pk for _ in range(7)]
    newest = sorted(ids, reverse=True)
    qs = Task.objects.all()
    first = keyset_page(qs, size=3)
    assert [t.pk for t in first.rows] == newest[:3] and first.before is None
    second = keyset_page(qs, after=first.after, size=3)
    assert [t.pk for t in second.rows] == newest[3:6]
    assert [t.pk for t in keyset_page(qs, before=second.before, size=3).rows] == newest[:3]
    oldest_first = keyset_page(qs, descending=False, after=str(min(ids)), size=10)
    assert [t.pk for t in oldest_first.rows] == sorted(ids)[1:] and oldest_first.after is None
    assert [t.pk for t in keyset_page(qs, after=f"x~{newest[2]}", size=3).rows] == newest[3:6]
    for bad in ("garbage", "~x", "1" * 30, "-5", "٣"):
        assert [t.pk for t in keyset_page(qs, after=bad, size=3).rows] == newest[:3], bad


def test_a_pages_links_keep_its_filters_and_drop_its_cursors(rf):
    from scheduler.console.views import query_with

    request = rf.get("/tasks/", {"state": ["failed", "lost"], "after": "9", "page": "2"})
    assert query_with(request, before="5") == "?state=failed&state=lost&page=2&before=5"
    assert query_with(request, drop=(), page=None) == "?state=failed&state=lost&after=9"
