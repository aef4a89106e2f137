"""Rows saved before each executor declared what it supports (executors/registry.py) and
Job.clean() began to refuse what none declares. Each change keeps what the node does:

- executor celery with kind task: the worker only enqueued the function on the django.tasks
  backend, which the node does itself with executor node;
- stateful on a shell or task job: the flag had no effect (no data map comes back);
- a Celery queue on a job whose executor is not celery: never read.

So that such a job's next edit is not refused for a field the operator did not touch.
"""

from django.db import migrations


def align(apps, schema_editor):
    Job = apps.get_model("scheduler", "Job")
    Job.objects.filter(executor="celery", kind="task").update(executor="node")
    Job.objects.filter(stateful=True).exclude(kind="python").update(stateful=False)
    Job.objects.exclude(executor="celery").exclude(celery_queue="").update(celery_queue="")


class Migration(migrations.Migration):
    dependencies = [("scheduler", "0019_definition_events")]

    operations = [migrations.RunPython(align, migrations.RunPython.noop)]
