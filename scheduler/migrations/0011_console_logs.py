# The console's live log and audit log: each log chunk's end offset (bytes of the log up to its end) for reads from a byte cursor,
# and a partial index of operator events for the audit log.

from django.db import migrations, models


def backfill_end_offsets(apps, schema_editor):
    """Running sums of the chunks' UTF-8 sizes, task by task, in id order."""
    TaskLog = apps.get_model("scheduler", "TaskLog")
    task_ids = (TaskLog.objects.filter(end_offset__isnull=True).order_by()
                .values_list("task_id", flat=True).distinct())
    for task_id in list(task_ids):
        end = 0
        rows = []
        for pk, text in (TaskLog.objects.filter(task_id=task_id).order_by("id")
                         .values_list("id", "text").iterator(chunk_size=200)):
            end += len(text.encode("utf-8", "replace"))
            rows.append(TaskLog(pk=pk, end_offset=end))
        TaskLog.objects.bulk_update(rows, ["end_offset"], batch_size=500)


class Migration(migrations.Migration):

    dependencies = [
        ('scheduler', '0010_member_timings'),
    ]

    operations = [
        migrations.AddField(
            model_name='tasklog',
            name='end_offset',
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name='tasklog',
            index=models.Index(fields=['task', 'end_offset'], name='tasklog_task_end'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('kind__in', ('job.paused', 'job.resumed', 'job.run_now', 'schedule.created', 'schedule.changed', 'schedule.paused', 'schedule.resumed', 'task.cancel', 'switchover.requested', 'order.returned'))), fields=['id'], name='event_operator_actions'),
        ),
        migrations.RunPython(backfill_end_offsets, migrations.RunPython.noop, elidable=True),
    ]
