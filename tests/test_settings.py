"""Safe defaults: DEBUG off, a per-install secret key, `check --deploy` clean with the TLS
switches, and every bad environment value refused in one line that names it (no traceback)."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys

import pytest

from scheduler.node import NodeSettings
from tests.conftest import ROOT

PRINT_SETTINGS = ("from django.conf import settings; "
                  "print(settings.DEBUG, settings.SECRET_KEY)")


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """manage.py in a fresh process, with an environment free of our own settings."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS")
            and not k.startswith("OPSCENTER_")}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def test_check_deploy_is_clean_in_production_settings(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={
        "DEBUG": "false", "OPSCENTER_HTTPS": "true", "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "ops.example.com", "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_warns_without_the_tls_switch(tmp_path):
    # The test above passes because of OPSCENTER_HTTPS, not because the checks are silenced.
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={
        "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "ops.example.com",
        "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stderr and "SESSION_COOKIE_SECURE" in result.stderr


def test_debug_is_off_and_the_secret_key_is_made_once_for_the_install(tmp_path):
    """Four processes of one install start together with no key yet: one key is made, kept
    private, and all of them (and any later one) use it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEBUG", "SECRET_KEY") and not k.startswith("OPSCENTER_")}
    env["OPSCENTER_VAR_DIR"] = str(tmp_path / "var")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "shell", "--no-imports",
                               "-c", PRINT_SETTINGS], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    lines = {out.strip() for out, _ in outputs}
    assert len(lines) == 1, lines
    debug, key = lines.pop().split(" ", 1)
    assert debug == "False"
    key_file = tmp_path / "var" / "secret-key"
    assert key_file.read_text().strip() == key and len(key) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == ["secret-key"]  # no leftovers
    later = manage("shell", "--no-imports", "-c", PRINT_SETTINGS,
                   env={"OPSCENTER_VAR_DIR": str(tmp_path / "var")})
    assert later.stdout.split() == ["False", key]


def test_a_secret_key_in_the_environment_wins_and_no_file_is_made(tmp_path):
    result = manage("shell", "--no-imports", "-c", PRINT_SETTINGS,
                    env={"SECRET_KEY": "k" * 60, "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.stdout.split() == ["False", "k" * 60]
    assert not (tmp_path / "secret-key").exists()


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("OPSCENTER_TASK_RETENTION_DAYS", "abc", "a whole number from 1 to 36500 days"),
    ("OPSCENTER_TASK_RETENTION_DAYS", "-1", "a whole number from 1 to 36500 days"),
    ("OPSCENTER_TASK_RETENTION_DAYS", "0", "a whole number from 1 to 36500 days"),
    ("OPSCENTER_TASK_RETENTION_DAYS", "99999999999999", "a whole number from 1 to 36500 days"),
    ("OPSCENTER_EVENT_RETENTION_DAYS", "1e9", "a whole number from 1 to 36500 days"),
    ("OPSCENTER_WORKERS", "0", "a whole number from 1 to 10000"),
    ("OPSCENTER_HEARTBEAT_INTERVAL", "nan", "a number from 0.05 to 60 seconds"),
    ("OPSCENTER_DEAD_AFTER", "inf", "a number from 0.1 to 3600 seconds"),
    ("OPSCENTER_CELERY_LEASE_TIMEOUT", "nan", "a number from 2 to 3600 seconds"),
    ("OPSCENTER_CELERY_LEASE_TIMEOUT", "1", "a number from 2 to 3600 seconds"),
    ("OPSCENTER_CELERY_START_TIMEOUT", "soon", "a number from 1 to 86400 seconds"),
    ("OPSCENTER_TAKEOVER_STAGGER", "-1", "a number from 0 to 3600 seconds"),
    ("OPSCENTER_STOP_GRACE", "soon", "a number from 0 to 86400 seconds"),
    ("OPSCENTER_LOG_LIMIT_BYTES", "12", "a whole number from 1000 to 1000000000 bytes"),
    ("OPSCENTER_HSTS_SECONDS", "-5", "a whole number from 0 to 63072000"),
    ("DEBUG", "maybe", "1, true, yes, on or 0, false, no, off"),
    ("OPSCENTER_HTTPS", "2", "1, true, yes, on or 0, false, no, off"),
    ("TIME_ZONE", "Mars/Olympus", "an IANA name"),
    ("LOG_LEVEL", "loud", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
])
def test_a_bad_environment_value_is_refused_in_one_line(tmp_path, name, value, allowed):
    env = {name: value, "OPSCENTER_VAR_DIR": str(tmp_path)}
    if name == "OPSCENTER_HSTS_SECONDS":
        env["OPSCENTER_HTTPS"] = "true"
    result = manage("runscheduler", "--cluster", "c", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"opscenter: {name}=") and repr(value) in lines[0]
    assert allowed in lines[0]


def test_every_command_refuses_a_bad_environment_in_one_line(tmp_path):
    for args in (["check"], ["migrate", "--noinput"], ["nosuchcommand"]):
        result = manage(*args, env={"OPSCENTER_TASK_RETENTION_DAYS": "-1",
                                    "OPSCENTER_VAR_DIR": str(tmp_path)})
        assert result.returncode == 2, args
        assert result.stderr.startswith("opscenter: OPSCENTER_TASK_RETENTION_DAYS='-1' is out "
                                        "of range"), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("server", [
    ["-m", "daphne", "-p", "0", "opscenter.asgi:application"],
    ["-c", "import opscenter.wsgi"],
    ["-m", "celery", "-A", "opscenter", "worker", "--pool", "solo"],
], ids=["asgi-daphne", "wsgi", "celery-worker"])
def test_the_servers_refuse_a_bad_environment_in_one_line(tmp_path, server):
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTER_")}
    result = subprocess.run([sys.executable, *server], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**base, "OPSCENTER_TASK_RETENTION_DAYS": "abc",
                                             "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "opscenter: OPSCENTER_TASK_RETENTION_DAYS='abc' is not a whole number from 1 to 36500 "
        "days."), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--heartbeat-interval", "nan"], "argument --heartbeat-interval: 'nan' is not finite"),
    (["--dead-after", "1e9"], "argument --dead-after: '1e9' is out of range: allowed is a "
                              "number from 0.1 to 3600 seconds"),
    (["--stop-grace", "-1"], "argument --stop-grace: '-1' is out of range"),
    (["--takeover-stagger", "x"], "argument --takeover-stagger: 'x' is not a number"),
    (["--backup-precedence", "1.5"], "argument --backup-precedence: '1.5' is not a whole"),
    (["--workers", "100000"], "argument --workers: '100000' is out of range"),
])
def test_node_options_are_bounded_like_the_environment(tmp_path, args, message):
    result = manage("runscheduler", "--cluster", "c", *args,
                    env={"OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_dead_after_must_exceed_the_heartbeat_whichever_door_sets_them(tmp_path):
    result = manage("runscheduler", "--cluster", "c", "--heartbeat-interval", "2",
                    env={"OPSCENTER_DEAD_AFTER": "1.5", "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert ("--dead-after (OPSCENTER_DEAD_AFTER) must be longer than --heartbeat-interval "
            "(OPSCENTER_HEARTBEAT_INTERVAL): 1.5 s is not longer than 2 s") in result.stderr
    with pytest.raises(ValueError, match="must be longer"):
        NodeSettings(heartbeat_interval=1.0, dead_after=1.0)
    with pytest.raises(ValueError, match="OPSCENTER_TASK_RETENTION_DAYS: -1 is out of range"):
        NodeSettings(task_retention_days=-1)


def test_static_files_are_served_with_debug_off(client, settings):
    assert settings.DEBUG is False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)
    assert client.get("/static/scheduler/schedule_preview.js").status_code == 200


@pytest.mark.parametrize(("name", "value", "message"), [
    ("OPSCENTER_EXCLUSIVE", "maybe", "is not a boolean: use one of 1, true, yes, on or 0"),
    ("OPSCENTER_DISTRIBUTED_ORDERS", "2", "is not a boolean"),
    ("OPSCENTER_BACKUP_PRECEDENCE", "first", "is not a whole number from 0 to 1000000"),
])
def test_the_node_refuses_a_bad_switch_or_number_in_its_environment(tmp_path, name, value,
                                                                    message):
    result = manage("runscheduler", "--cluster", "c",
                    env={name: value, "OPSCENTER_VAR_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"CommandError: {name}={value!r} {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
