"""Wake the console's live relay on PostgreSQL: a statement-level trigger on each table the
console shows sends pg_notify('opscenter_console', '<table>') (see scheduler/db.py and
scheduler/console/relay.py). Every door is covered (nodes, admin, console, commands, SQL) and
the nodes' hot path runs no code for it: one notification per table and transaction
(PostgreSQL folds identical ones), queued at commit. SQLite needs nothing: the relay watches
`PRAGMA data_version`."""

from django.db import migrations

CHANNEL = "opscenter_console"
# Not scheduler_tasklog: no pushed fragment shows a log (the task page tails it over HTTP),
# and running jobs append to it all the time.
TABLES = ["scheduler_event", "scheduler_task", "scheduler_member",
          "scheduler_job", "scheduler_schedule", "scheduler_cluster", "scheduler_order",
          "scheduler_jobchain", "scheduler_chainnode"]
FUNCTION = "opscenter_console_notify"

FORWARD = [
    f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
    RETURN NULL;
END $$""",
    *(f"""CREATE TRIGGER {table}_console_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()""" for table in TABLES),
]
REVERSE = [*(f"DROP TRIGGER IF EXISTS {table}_console_notify ON {table}" for table in TABLES),
           f"DROP FUNCTION IF EXISTS {FUNCTION}()"]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in FORWARD:
            schema_editor.execute(statement)


def reverse(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("scheduler", "0011_console_logs")]

    operations = [migrations.RunPython(forward, reverse, elidable=False)]
