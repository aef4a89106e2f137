"""The console in a real browser, against the DOM contract of issue #13.

Each test drives chromium through the console served by daphne (tests/browser/conftest.py),
with real node processes where something must run. Live updates are checked without a
reload: a mark set on `window` before the change must still be there after it.
"""

from __future__ import annotations

import re
import signal

import pytest
from playwright.sync_api import expect

from scheduler.eventlog import Actor
from tests.conftest import add_interval, add_job, is_postgres, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LIVE_MS = 15_000  # a live change must reach the page within this (failover: more below)
# Fast timings for the node processes (as tests/test_cluster.py).
FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5", "--takeover-stagger", "0.5"]


def mark_no_reload(page) -> None:
    page.evaluate("() => { window.__opscenterNoReload = true; }")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("() => window.__opscenterNoReload === true"), \
        "the page was reloaded: the change did not arrive live"


def open_ok(page, path: str):
    response = page.goto(path)
    if response is None or not response.ok:
        raise AssertionError(f"GET {path}: {response.status if response else 'no response'}")
    return response


def confirm(page, reason: str) -> None:
    """The confirmation dialog of an operator action: a reason, then go."""
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    page.locator("#confirm-reason").fill(reason)
    page.locator("#confirm-go").click()
    expect(dialog).to_be_hidden()


def task_link(page, task_pk: int):
    """A task's row (or its link) among a page's recent tasks."""
    return page.locator(f'#recent-tasks tr#task-{task_pk}, '
                        f'#recent-tasks a[href$="/tasks/{task_pk}/"]').first


# ------------------------------------------------------------------ (a) logging in


def test_log_in_through_the_form(browser, console, request, check_page, transactional_db):
    from tests.browser.conftest import log_in, make_user, open_page

    make_user("lena", "operator")
    page = open_page(browser, console, request)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))
    check_page(page, "login")
    page.locator("#id_username").fill("lena")
    page.locator("#id_password").fill("not her password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("did not match")
    log_in(page, "lena")
    expect(page).to_have_url(console.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    check_page(page, "dashboard")


def test_css_is_served_with_debug_off(page, console):
    """WhiteNoise serves the static files under daphne: the page is styled."""
    stylesheet = page.evaluate(
        "() => [...document.styleSheets].map(s => s.href + ' ' + s.cssRules.length)")
    assert any("console.css" in s and not s.endswith(" 0") for s in stylesheet), stylesheet
    answer = page.request.get(console.url + "/static/console/console.css")
    assert answer.ok and "text/css" in answer.headers["content-type"]


def test_narrow_screen_390px(login, check_page):
    """The pages that exist from the start; test_every_page_passes_axe shoots the jobs and
    cluster pages at 390 px too."""
    page = login("nina", "operator", width=390, height=844)
    check_page(page, "dashboard-390px")
    page.get_by_role("button", name="Log out").click()
    check_page(page, "login-390px")


# ------------------------------------------------------------------ (e) axe on every page


def test_login_and_dashboard_pass_axe(login, check_page, cluster):
    """The two pages that exist from the start (the others: test_every_page_passes_axe)."""
    page = login("ola", "operator")
    open_ok(page, "/")
    check_page(page, "dashboard")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/"))
    check_page(page, "login")


def test_every_page_passes_axe(login, check_page, cluster, start_node):
    """Every page of the console with real content: axe-core finds nothing, in light and
    dark, and the browser logs no error."""
    from scheduler.models import ChainNode, Job, JobChain, Member, Order, Task

    job = add_job(cluster, "tick")
    add_interval(job, seconds=1)
    add_job(cluster, "hello", kind="shell", command="echo hello; echo line two")
    chain = JobChain.objects.create(cluster=cluster, name="etl", title="A chain")
    ChainNode.objects.create(chain=chain, state="start", job=job, next_state="done",
                             error_state="done", position=0)
    ChainNode.objects.create(chain=chain, state="done", position=1)
    an_order = Order.add(chain, "order-1", title="An order",
                         actor=Actor("tester", "cli", "axe test"))
    start_node("--cluster", "test", "--node", "n1", *FAST)
    shell_task = Job.objects.get(name="hello").run_now(Actor("tester", "cli", "axe test"))
    wait_for(lambda: Task.objects.filter(pk=shell_task.pk, state="succeeded").exists(),
             timeout=20, message="the shell task ran")
    wait_for(lambda: Task.objects.filter(job=job, state="succeeded").exists(), timeout=20,
             message="tick ran")
    job.pause(Actor("tester", "console", "axe test: an audit line"))
    member = Member.objects.get(cluster=cluster, name="n1")

    page = login("axel", "operator")
    pages = [
        ("dashboard", "/"),
        ("cluster", f"/clusters/{cluster.pk}/"),
        ("jobs", "/jobs/"),
        ("job", f"/jobs/{job.pk}/"),
        ("tasks", "/tasks/"),
        ("task", f"/tasks/{shell_task.pk}/"),
        ("chains", "/chains/"),
        ("chain", f"/chains/{chain.pk}/"),
        ("order", f"/orders/{an_order.pk}/"),
        ("audit", "/audit/"),
    ]
    failures = []
    for name, path in pages:
        page.errors.clear()
        try:
            open_ok(page, path)
            check_page(page, name)
        except AssertionError as exc:
            failures.append(f"{name} ({path}): {exc}")
    page.set_viewport_size({"width": 390, "height": 844})
    for name, path in pages[1:4]:
        page.errors.clear()
        try:
            open_ok(page, path)
            check_page(page, f"{name}-390px")
        except AssertionError as exc:
            failures.append(f"{name} at 390 px ({path}): {exc}")
    assert member.pk  # the cluster page showed a member
    assert not failures, "\n\n".join(failures)


# ------------------------------------------------------------------ (b) pause and resume


def test_pause_a_job_stops_it_and_resume_fires_it_again(page, check_page, cluster,
                                                        start_node):
    from scheduler.models import Event, Job, Task

    job = add_job(cluster, "tick")
    add_interval(job, seconds=1)
    clock = add_job(cluster, "clock")  # a second job: fires that measure time passing
    add_interval(clock, seconds=1)
    start_node("--cluster", "test", "--node", "n1", *FAST)
    wait_for(lambda: Task.objects.filter(job=job).count() >= 2, timeout=20,
             message="tick fires")

    open_ok(page, "/jobs/")
    row = page.locator(f"#job-{job.pk}")
    expect(row).to_have_attribute("data-paused", "false")
    expect(row.get_by_role("link", name="tick")).to_have_attribute(
        "href", re.compile(rf"/jobs/{job.pk}/$"))
    row.get_by_role("button", name="Pause").click()
    confirm(page, "browser test: pause tick")
    expect(row).to_have_attribute("data-paused", "true")
    screenshot_both(page, check_page, "jobs-paused")

    wait_for(lambda: Job.objects.get(pk=job.pk).paused, timeout=5, message="paused in DB")
    event = Event.objects.filter(job=job, kind="job.paused").latest("id")
    assert event.reason == "browser test: pause tick" and event.source == "console"
    # One clock fire for anything claimed just before the pause, then two more intervals in
    # which tick must not get a task.
    last_clock = Task.objects.filter(job=clock).order_by("-id").values_list("id", flat=True)[0]
    wait_for(lambda: Task.objects.filter(job=clock, id__gt=last_clock).exists(), timeout=10)
    ticks = Task.objects.filter(job=job).count()
    mark = Task.objects.filter(job=clock).order_by("-id").values_list("id", flat=True)[0]
    wait_for(lambda: Task.objects.filter(job=clock, id__gt=mark).count() >= 2, timeout=10,
             message="two more intervals pass")
    assert Task.objects.filter(job=job).count() == ticks, "a paused job got a new task"

    open_ok(page, f"/jobs/{job.pk}/")
    expect(page.locator("#job-state")).to_have_text("paused")
    screenshot_both(page, check_page, "job-paused")
    page.get_by_role("button", name="Resume").click()
    confirm(page, "browser test: resume tick")
    expect(page.locator("#job-state")).to_have_text("active")
    # The action may come back as a new page; from here on the page must not load again.
    mark_no_reload(page)
    newest = Task.objects.filter(job=job).order_by("-id").values_list("id", flat=True)[0]
    fresh = wait_for(lambda: Task.objects.filter(job=job, id__gt=newest).order_by("id").first(),
                     timeout=10, message="tick fires again")
    expect(task_link(page, fresh.pk)).to_be_attached(timeout=LIVE_MS)
    expect(page.locator("#recent-tasks tr[data-task-state]").first).to_be_visible()
    assert_not_reloaded(page)
    screenshot_both(page, check_page, "job-resumed")
    assert not page.errors, page.errors


def screenshot_both(page, check_page, name: str) -> None:
    """Screenshots (light and dark) of a page visited by a functional test; axe-core runs in
    test_every_page_passes_axe."""
    check_page(page, name, axe=False)


# ------------------------------------------------------------------ (c) fail-over, live


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.skipif(not is_postgres(), reason="a passive cluster needs PostgreSQL")
def test_kill_the_primary_and_watch_the_backup_take_over(page, check_page, cluster,
                                                        start_node):
    from scheduler.models import Member

    def passive(name, *extra):
        return start_node("--cluster", "test", "--node", name, "--exclusive", *extra, *FAST)

    primary = passive("primary")
    passive("backup", "--backup")

    def live(name):
        return Member.objects.filter(cluster=cluster, name=name,
                                     state__in=Member.LIVE_STATES).first()

    wait_for(lambda: (m := live("primary")) and m.state == "active", timeout=20,
             message="primary active")
    wait_for(lambda: (m := live("backup")) and m.state == "standby", timeout=20,
             message="backup standby")
    p, b = live("primary"), live("backup")

    open_ok(page, f"/clusters/{cluster.pk}/")
    p_row, b_row = page.locator(f"#member-{p.pk}"), page.locator(f"#member-{b.pk}")
    expect(p_row).to_have_attribute("data-state", "active")
    expect(b_row).to_have_attribute("data-state", "standby")
    expect(page.locator("#lease-holder")).to_have_text("primary")
    expect(p_row.locator(".heartbeat-age")).to_be_visible()
    screenshot_both(page, check_page, "cluster-before")
    mark_no_reload(page)

    primary.signal(signal.SIGKILL)
    expect(p_row).to_have_attribute("data-state", "dead", timeout=LIVE_MS)
    expect(b_row).to_have_attribute("data-state", "active", timeout=LIVE_MS)
    expect(page.locator("#lease-holder")).to_have_text("backup", timeout=LIVE_MS)
    assert_not_reloaded(page)
    screenshot_both(page, check_page, "cluster-after-failover")
    assert not page.errors, page.errors


# ------------------------------------------------------------------ (d) a log that tails


LINES = 12
SLOW_ECHO = f'for i in $(seq 1 {LINES}); do echo "line $i of {LINES}"; sleep 0.6; done'


def test_follow_a_running_tasks_log(page, check_page, cluster, start_node):
    from scheduler.models import Task

    job = add_job(cluster, "slow-echo", kind="shell", command=SLOW_ECHO)
    start_node("--cluster", "test", "--node", "n1", *FAST)
    task = job.run_now(Actor("tester", "cli", "log test"))
    wait_for(lambda: Task.objects.filter(pk=task.pk, state="running").exists(), timeout=20,
             message="the task runs")

    open_ok(page, f"/tasks/{task.pk}/")
    log = page.locator("#task-log")
    expect(page.locator("#task-state")).to_contain_text("running")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Download"))).to_be_visible()
    assert f"line {LINES} of" not in log.inner_text(), "the task ended before the page opened"
    mark_no_reload(page)
    screenshot_both(page, check_page, "task-running")
    expect(log).to_contain_text("line 1 of", timeout=LIVE_MS)
    expect(log).to_contain_text(f"line {LINES} of {LINES}", timeout=LIVE_MS + 10_000)
    expect(page.locator("#task-state")).to_contain_text("succeeded", timeout=LIVE_MS)
    assert_not_reloaded(page)
    screenshot_both(page, check_page, "task-succeeded")
    assert not page.errors, page.errors


# ------------------------------------------------------------------ (f) a viewer


def test_a_viewer_sees_operate_buttons_disabled_with_a_reason(login, check_page, cluster):
    job = add_job(cluster, "tick")
    add_interval(job, seconds=60)
    page = login("vic", "viewer")

    open_ok(page, "/jobs/")
    row = page.locator(f"#job-{job.pk}")
    for name in ("Pause", "Run now"):
        button = row.get_by_role("button", name=name)
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile(r"operator"))
    screenshot_both(page, check_page, "jobs-viewer")

    open_ok(page, f"/jobs/{job.pk}/")
    for name in ("Pause", "Run now"):
        button = page.get_by_role("button", name=name)
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile(r"operator"))
    screenshot_both(page, check_page, "job-viewer")
    assert not page.errors, page.errors
