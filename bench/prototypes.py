"""Prototypes of changes to the hot path, measured by the bench, NOT applied to scheduler/.

    .venv/bin/python bench/fires.py --prototype insert-unnest ...

runs the members through `python -m bench.patched runscheduler ...`, which swaps in the
named prototypes before the command starts. They exist to put a number on a suggestion in
docs/performance.md; the scheduler's own code is what the other figures measure.

insert-unnest  ledger._insert_fires as one fixed-text INSERT ... SELECT FROM unnest(arrays),
               prepared on the member's connection (like ledger._fetch), instead of a
               multi-row VALUES list that psycopg's client-side binding re-parses and quotes
               on every claim.
"""

from __future__ import annotations

INSERT_UNNEST = (
    "INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
    "trigger, state, member_id, not_before, created_at, started_at, finished_at, error, "
    "parameters, requested_by, cancel_reason) "
    "SELECT %(c)s, v.job_id, v.schedule_id, v.fire_at, 1, 'schedule', v.state, "
    "CASE WHEN v.state = 'running' THEN %(m)s::bigint END, "
    "CASE WHEN v.state = 'queued' THEN %(now)s::timestamptz END, %(now)s::timestamptz, "
    "CASE WHEN v.state = 'running' THEN %(now)s::timestamptz END, "
    "CASE WHEN v.state = 'skipped' THEN %(now)s::timestamptz END, "
    "CASE WHEN v.state = 'skipped' THEN %(skipped)s ELSE '' END, '{}', '', '' "
    "FROM unnest(%(jobs)s::bigint[], %(schedules)s::bigint[], %(fires)s::timestamptz[], "
    "%(states)s::text[]) AS v(job_id, schedule_id, fire_at, state) "
    "ON CONFLICT DO NOTHING RETURNING id, job_id, schedule_id, scheduled_for, state"
)


def _insert_fires_unnest(cluster_id, member_id, now, rows):
    import psycopg
    from django.db import connection

    from scheduler import ledger

    if not rows:
        return []
    if connection.vendor != "postgresql":
        return _original_insert_fires(cluster_id, member_id, now, rows)
    params = {"c": cluster_id, "m": member_id, "now": now, "skipped": ledger.SKIPPED_OVERLAP,
              "jobs": [r[0] for r in rows], "schedules": [r[1] for r in rows],
              "fires": [r[2] for r in rows], "states": [str(r[3]) for r in rows]}
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(INSERT_UNNEST, params, prepare=True)
        out = cursor.fetchall()
    if len(out) != len(rows):
        ledger.log.warning("%d fire(s) were already in the ledger and were not started again",
                           len(rows) - len(out))
    return out


_original_insert_fires = None
PROTOTYPES = {"insert-unnest": ("_insert_fires", _insert_fires_unnest)}


def apply(names: str) -> None:
    global _original_insert_fires
    from scheduler import ledger

    for name in filter(None, names.split(",")):
        attr, func = PROTOTYPES[name]
        if attr == "_insert_fires":
            _original_insert_fires = ledger._insert_fires
        setattr(ledger, attr, func)
