"""Data migrations, run forward from the migration before them on a real database."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(target: tuple[str, str]):
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


def migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_jobs_saved_before_the_executors_declared_their_support_are_aligned():
    old = migrate(("scheduler", "0019_definition_events"))
    try:
        Cluster, Job = old.get_model("scheduler", "Cluster"), old.get_model("scheduler", "Job")
        cluster = Cluster.objects.create(name="m")

        def job(name, **fields):
            return Job.objects.create(cluster=cluster, name=name, command="x", **fields).pk

        celery_task = job("a", kind="task", executor="celery", celery_queue="q")
        stateful_shell = job("b", kind="shell", stateful=True)
        stray_queue = job("c", kind="shell", executor="node", celery_queue="q")
        untouched = job("d", kind="python", executor="celery", celery_queue="q", stateful=True)
        new = migrate(("scheduler", "0020_executor_support"))
    finally:
        migrate_to_latest()  # leave the schema as the rest of the suite expects
    rows = {row["pk"]: row for row in new.get_model("scheduler", "Job").objects.values(
        "pk", "kind", "executor", "celery_queue", "stateful")}
    assert rows[celery_task] == {"pk": celery_task, "kind": "task", "executor": "node",
                                 "celery_queue": "", "stateful": False}
    assert rows[stateful_shell]["stateful"] is False
    assert rows[stray_queue]["celery_queue"] == ""
    assert rows[untouched] == {"pk": untouched, "kind": "python", "executor": "celery",
                               "celery_queue": "q", "stateful": True}
