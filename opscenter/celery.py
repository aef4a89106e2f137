"""The Celery app of the `celery` executor: `celery -A opscenter worker -Q <queue>`.

The broker is OPSCENTER_CELERY_BROKER (Redis by default; an amqp:// URL for RabbitMQ; or
`filesystem://`, kombu's filesystem transport: messages are files in OPSCENTER_CELERY_FOLDER,
default var/celery-broker, shared by the nodes and the workers of one machine; `./run demo`
uses it, so that the demo needs no Redis). No result backend: the task row in the database is
where a run's outcome goes, written by the worker itself (scheduler/executors/celery_executor.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery, signals

from opscenter.boot import settings_or_exit

settings_or_exit()

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = "var/celery-broker"


def _visibility_timeout() -> float:
    try:
        return float(os.environ.get("OPSCENTER_CELERY_VISIBILITY_TIMEOUT", "3600"))
    except ValueError:
        return 3600.0


def _filesystem_folder() -> Path:
    folder = Path(os.environ.get("OPSCENTER_CELERY_FOLDER") or DEFAULT_FOLDER)
    return folder if folder.is_absolute() else ROOT / folder


def _filesystem_options() -> dict:
    """kombu's filesystem transport: messages in <folder>/messages (written and read there: one
    folder, so every process of the machine sees every message), taken messages moved (a
    rename, atomic on one file system: two workers never take one message) to
    <folder>/processed, where the workers prune them (prune_processed), exchange bindings in
    <folder>/control. A relative folder is relative to the project. The folders are made here.
    (kombu's store_processed=False would move a taken message to the system's temporary folder
    instead: a copy, not an atomic rename, when that is another file system.)"""
    folder = _filesystem_folder()
    messages, processed, control = (folder / "messages", folder / "processed",
                                    folder / "control")
    for path in (messages, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    return {"data_folder_in": str(messages), "data_folder_out": str(messages),
            "store_processed": True, "processed_folder": str(processed),
            "control_folder": str(control)}


BROKER = os.environ.get("OPSCENTER_CELERY_BROKER") or DEFAULT_BROKER
TRANSPORT_OPTIONS: dict = {"visibility_timeout": _visibility_timeout()}
if BROKER.startswith("filesystem://"):
    if BROKER in ("filesystem://", "filesystem:///"):
        BROKER = "filesystem://localhost//"  # the same, without kombu's "no hostname" warning
    # No visibility timeout here: a message taken by a worker that is killed before it acks is
    # never given back (a warm shutdown gives back what it has not started). The task's lease
    # covers it: the node ends the task lost and the cluster runs it again (README).
    TRANSPORT_OPTIONS = _filesystem_options()

app = Celery("opscenter", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # Exactly once comes from the task row, not from the broker: the worker's start is guarded
    # (celery_executor.run_on_worker), so a message delivered again never starts a run twice.
    # So the broker may deliver at least once, and these make it do so. Acknowledged when the
    # run ends, and given back when the worker is lost: a message taken by a worker that died
    # before it started the job is delivered again (Redis: after the visibility timeout;
    # RabbitMQ: at once), and runs if its task still waits for it (START_TIMEOUT).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message per process at a time: a busy worker holds no waiting messages that an idle
    # one could run, and a worker that dies takes at most the one it runs with it.
    worker_prefetch_multiplier=1,
    # A lost broker connection does not stop running jobs (Celery 6 would): a run writes its
    # own row, and its message, given back, is refused by the guarded start.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_transport_options=TRANSPORT_OPTIONS,
    broker_connection_retry_on_startup=True,
)
# Celery's Django fix-up closes the database connection before and after every task unless
# this is set: a new PostgreSQL session per task. Kept for 100 tasks instead; a connection
# that went bad meanwhile is replaced at the task's start (celery_executor.run_on_worker).
app.conf["CELERY_DB_REUSE_MAX"] = 100


@app.task(name="opscenter.run_task")
def run_task(payload: dict) -> str:
    """Run one task of a job sent by a node; returns how it ended (for the worker's log)."""
    from scheduler.executors.celery_executor import run_on_worker

    return run_on_worker(payload)


# --------------------------------------------------------------------------------------------
# The filesystem transport keeps every message a worker took in <folder>/processed; a worker
# removes the old ones when it starts and, at most once a minute, after a task.

# A taken message is read the moment it is moved there: a minute old, it was read long ago.
PROCESSED_KEEP = 60.0
_pruned_at = 0.0


def prune_processed(folder: Path, keep: float = PROCESSED_KEEP, now: float | None = None) -> int:
    """Remove the messages moved into `folder` more than `keep` seconds ago (the move sets
    the file's ctime); returns how many. Never raises: another worker may prune too."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and \
                    now - max(info.st_ctime, info.st_mtime) > keep:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def _prune_processed_now(**_kwargs) -> None:
    global _pruned_at
    _pruned_at = time.monotonic()
    prune_processed(Path(TRANSPORT_OPTIONS["processed_folder"]))


def _prune_processed_at_times(**_kwargs) -> None:
    if time.monotonic() - _pruned_at >= PROCESSED_KEEP:
        _prune_processed_now()


if "processed_folder" in TRANSPORT_OPTIONS:
    signals.worker_ready.connect(_prune_processed_now, weak=False)
    signals.task_postrun.connect(_prune_processed_at_times, weak=False)
