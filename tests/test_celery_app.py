"""opscenter/celery.py: the broker's settings, and the filesystem transport's pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from opscenter.celery import PROCESSED_KEEP, prune_processed
from tests.conftest import ROOT


def test_prune_processed_removes_only_messages_taken_more_than_a_minute_ago(tmp_path):
    taken = tmp_path / "1_a.demo.msg"
    taken.write_text("{}")
    (tmp_path / "a-folder").mkdir()
    assert prune_processed(tmp_path) == 0  # just taken: kept
    assert taken.exists()
    assert prune_processed(tmp_path, now=time.time() + PROCESSED_KEEP + 1) == 1
    assert not taken.exists() and (tmp_path / "a-folder").is_dir()
    assert prune_processed(tmp_path / "missing") == 0


def _app_settings(env: dict) -> dict:
    code = ("import json; from opscenter.celery import app, TRANSPORT_OPTIONS; "
            "c = app.conf; print(json.dumps({'broker': c.broker_url, 'options': TRANSPORT_OPTIONS,"
            " 'acks_late': c.task_acks_late, 'reject': c.task_reject_on_worker_lost,"
            " 'prefetch': c.worker_prefetch_multiplier,"
            " 'cancel': c.worker_cancel_long_running_tasks_on_connection_loss}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=60, check=True)
    return json.loads(out.stdout)


def test_the_filesystem_broker_moves_taken_messages_within_its_own_folder(tmp_path):
    folder = tmp_path / "broker"
    settings = _app_settings({"OPSCENTER_CELERY_BROKER": "filesystem://",
                              "OPSCENTER_CELERY_FOLDER": str(folder)})
    options = settings["options"]
    assert settings["broker"] == "filesystem://localhost//"
    # A rename within one file system: atomic, so two workers never take one message (kombu's
    # store_processed=False would copy it to the system's temporary folder instead).
    assert options["store_processed"] is True
    assert options["processed_folder"] == str(folder / "processed")
    assert options["data_folder_in"] == options["data_folder_out"] == str(folder / "messages")
    assert all((folder / name).is_dir() for name in ("messages", "processed", "control"))


def test_a_message_is_acknowledged_when_its_run_ends_and_taken_one_at_a_time():
    settings = _app_settings({"OPSCENTER_CELERY_BROKER": "redis://127.0.0.1:6379/0"})
    assert (settings["acks_late"], settings["reject"], settings["prefetch"],
            settings["cancel"]) == (True, True, 1, False)
    assert settings["options"] == {"visibility_timeout": 3600.0}
