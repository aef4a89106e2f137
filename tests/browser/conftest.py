"""Browser tests: the console under daphne, driven by Debian's chromium through Playwright.

- `console` starts daphne as a subprocess on a free port against the test database (the
  tests' data must be committed: `django_db(transaction=True)`), waits until it answers and
  stops it after the module.
- `browser` is chromium at /usr/bin/chromium (Playwright's own download does not work here).
  Missing chromium skips these tests, except under CI=true where it is a failure.
- `login(user)` opens a new browser page logged in through the real login form; `page` is
  one logged in as an operator.
- `check_page(page, name)` is what every visited page goes through: axe-core finds no
  violations, the browser logged no errors, and a screenshot is saved in light and dark
  (var/screenshots/<test>-<name>-<theme>.png).

Playwright's sync API keeps an event loop running in this thread, so Django's ORM needs
DJANGO_ALLOW_ASYNC_UNSAFE while a browser is open. The browser is started per module (not
per session as pytest-playwright's own fixtures do) so the variable is set only while these
tests run, and other tests keep Django's async-safety check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, console_user, database_url

CHROMIUM = os.environ.get("OPSCENTER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
AXE_VERSION = "4.11.1"  # also in ./run (setup installs it); bump both together
AXE_DIR = ROOT / "var" / "node"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "var" / "screenshots"
TIMEOUT_MS = 15_000  # Playwright's default for expect() and actions in these tests
PASSWORD = "browser-pw-1"  # noqa: S105 (a test user's password)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing(reason: str):
    """Skip, or under CI=true fail: CI installs chromium and must run these tests."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}: the browser tests must run in CI", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------ chromium and axe-core


def axe_script() -> Path:
    """axe-core's JS file, installed with npm into var/node (git-ignored) when missing."""
    if AXE_JS.exists():
        return AXE_JS
    npm = shutil.which("npm")
    if npm is None:
        missing(f"axe-core is not in {AXE_JS} and npm is not installed to fetch it "
                f"(npm install --prefix var/node axe-core@{AXE_VERSION})")
    done = subprocess.run(
        [npm, "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", "--no-save",
         f"axe-core@{AXE_VERSION}"],
        capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not AXE_JS.exists():
        missing(f"npm could not install axe-core@{AXE_VERSION}: "
                f"{(done.stderr or done.stdout).strip()[-500:]}")
    return AXE_JS


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        missing(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


# ------------------------------------------------------------------ the console under daphne


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleServer:
    """`daphne opscenter.asgi:application` on 127.0.0.1:<free port>, DEBUG off."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = tmp / f"opsc-console-{os.getpid()}-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1",
               "DEBUG": "false", "DJANGO_SETTINGS_MODULE": "opscenter.settings"}
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "opscenter.asgi:application"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daphne exited with {self.proc.returncode}:\n"
                                     f"{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/login/", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"daphne did not answer on {self.url} within {timeout} s:\n"
                             f"{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def console(django_db_setup, django_db_blocker):
    """The console under daphne against the test database, for the whole module."""
    server = ConsoleServer()
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ pages and users


def make_user(name: str, group: str | None):
    """A console user whose password the server can check: the tests' fast MD5 hasher is
    not in the server's settings, so this one password is hashed with PBKDF2."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password

    user = console_user(name, group)
    user.password = make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    user.save(update_fields=["password"])
    return user


class Errors(list):
    """What the browser logged as an error on a page (console errors, uncaught exceptions)."""


def open_page(browser, console, request, *, width: int = 1280, height: int = 900):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(base_url=console.url, viewport={"width": width,
                                                                   "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    request.addfinalizer(context.close)
    page = context.new_page()
    errors = Errors()
    page.on("console", lambda msg: errors.append(
        f"console.{msg.type}: {msg.text} ({msg.location.get('url', '')})")
        if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.errors = errors
    return page


def log_in(page, username: str, password: str = PASSWORD) -> None:
    """Through the real login form, as a person would."""
    from playwright.sync_api import expect

    page.goto("/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile(r".*/login/.*"))
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


@pytest.fixture
def login(browser, console, request, transactional_db):
    """login(name, group="operator", **viewport) -> a new page logged in as a new user."""

    def open_as(name: str, group: str | None = "operator", **viewport):
        make_user(name, group)
        page = open_page(browser, console, request, **viewport)
        log_in(page, name)
        return page

    return open_as


@pytest.fixture
def page(login):
    """A browser page logged in as an operator (through the login form)."""
    return login("olga", "operator")


# ------------------------------------------------------------------ checks on every page


def format_violations(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v.get('impact')}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"][:8]:
            target = " ".join(json.dumps(t) if not isinstance(t, str) else t
                              for t in node["target"])
            summary = (node.get("failureSummary") or "").replace("\n", " / ")
            lines.append(f"    at {target}: {summary}")
            lines.append(f"       {node.get('html', '')[:200]}")
        if len(v["nodes"]) > 8:
            lines.append(f"    ... and {len(v['nodes']) - 8} more")
    return "\n".join(lines)


def assert_accessible(page, what: str = "") -> None:
    """axe-core on the page as it is now: no violations (listed readably when any)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_script()))
    violations = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    assert not violations, (f"axe-core found {len(violations)} violation(s) on "
                            f"{what or page.url}:\n{format_violations(violations)}")


def screenshot(page, name: str, request) -> Path:
    """Save var/screenshots/<test>-<name>.png (the full page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    path = SCREENSHOTS / f"{test}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_no_browser_errors(page, what: str = "") -> None:
    errors = getattr(page, "errors", [])
    assert not errors, f"the browser logged errors on {what or page.url}:\n" + "\n".join(errors)


@pytest.fixture
def check_page(request):
    """check_page(page, name, axe=True): axe-core (unless axe=False) and screenshots in the
    light and the dark theme, and no browser errors so far."""

    def check(page, name: str, axe: bool = True) -> None:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            if axe:
                assert_accessible(page, f"{name} ({scheme} theme, {page.url})")
            screenshot(page, f"{name}-{scheme}", request)
        page.emulate_media(color_scheme="light")
        assert_no_browser_errors(page, name)

    return check
