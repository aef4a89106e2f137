"""How fast `manage.py auditfires` audits a real-sized ledger, and that it finds exactly the
anomalies planted in it.

    .venv/bin/python bench/audit.py [--db opsc_audit_bench] [--schedules 1000] [--runs 3]
                                    [--json-too] [--keep-db] [--force]

Builds, in a database of its own (dropped and created), an hour of ledger for 1,000 one-second
interval schedules (3.6 million task rows, INSERT ... SELECT generate_series) plus 10 minutely
cron schedules, each with its `schedule.created` event, three members, and planted anomalies:
deleted fires (MISSED), a coalesced outage with its misfire record, a paused stretch with its
events, a recovered fire, an overlap skip, a second start without a reason (DOUBLE), a task off
the grid (UNEXPECTED), an interval edited mid-window (audited against each side). Then it runs
the audit (in this process, and as the command end to end) and checks every verdict count
against the plan. Figures go to docs/performance-audit.md.

Heavy on PostgreSQL: it waits for nothing, so it refuses to start while another benchmark
(bench/fires.py, bench/failover.py) is running, unless --force.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
FORBIDDEN = re.compile(r"^(postgres|template\d*|test.*|opsc_dev|opsc_me|opsc_bench)$")
CLUSTER = "audit-bench"
HOUR = 3600
MEMBERS = ("m1", "m2", "m3")


def log(msg: str) -> None:
    print(f"[audit-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def others_running() -> list[str]:
    out = subprocess.run(["pgrep", "-af", r"bench/(fires|failover)\.py"], capture_output=True,
                         text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


# ---------------------------------------------------------------- the database


def create_db(name: str) -> str:
    if FORBIDDEN.match(name):
        raise SystemExit(f"refusing to use database {name!r}: it is not this bench's own")
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG}/{name}"
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input",
                          "-v", "0"], cwd=ROOT, env={**os.environ, "DATABASE_URL": url},
                         capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"migrate failed:\n{out.stdout}\n{out.stderr}")
    return url


def drop_db(name: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- the ledger and its anomalies

# Interval schedules are numbered 1..n (k = the fire's second in the hour, 0..3599).
GAP = (10, range(100, 105))              # 5 fires deleted by hand: MISSED
OUTAGE = (20, range(200, 259))           # 59 fires coalesced by run_once (fire 259 ran late)
PAUSE = (30, range(1000, 1300))          # job paused from just before 1000 to just before 1300
DOUBLE_AT = (40, 50)                     # a "retry" of a fire that had succeeded: DOUBLE
RERUN_AT = (50, 70)                      # lost with its member, recovered: re-run
SKIP_AT = (60, 80)                       # overlap policy skip: misfire (overlap skip)
ODD_AT = (70, 90)                        # a task half a second off the grid: UNEXPECTED
EDIT = (80, 1800)                        # edited at second 1800 from 1 s to 2 s
CRONS = 10                               # minutely cron schedules
CRON_GAP = (3, 17)                       # cron schedule 3 (1-based), minute 17 deleted: MISSED


def expected(n: int) -> dict[str, int]:
    owed = (n - 1) * HOUR + EDIT[1] + (HOUR - EDIT[1]) // 2 + CRONS * 60
    out = {"re-run": 1, "misfire": len(OUTAGE[1]) + 1, "paused": len(PAUSE[1]),
           "not yet": 0, "behind": 0, "down": 0, "MISSED": len(GAP[1]) + 1, "DOUBLE": 1,
           "UNEXPECTED": 1}
    out["ran"] = owed - sum(v for k, v in out.items() if k != "UNEXPECTED")
    return out


def build(conn: psycopg.Connection, n: int) -> dict:
    """The ledger, in a handful of set-based statements. Returns the plan's times."""
    q = conn.execute
    t0 = q("SELECT date_trunc('minute', now()) - interval '2 hours'").fetchone()[0]
    created = t0 - timedelta(seconds=10)
    cluster = q("INSERT INTO scheduler_cluster (name, description, mode, lease_epoch, "
                "created_at) VALUES (%s, '', 'active', 0, %s) RETURNING id",
                [CLUSTER, created]).fetchone()[0]
    members = [q("INSERT INTO scheduler_member (cluster_id, name, mode, role, "
                 "backup_precedence, reclaim, labels, workers, host, ip, pid, version, state, "
                 "started_at, heartbeat_at, clock_skew_ms, running_tasks, stop_reason, "
                 "declared_dead_by) VALUES (%s, %s, 'active', '', 0, false, '[]', 8, 'bench', "
                 "'', 1, 'bench', 'stopped', %s, %s, 0, 0, 'normal stop', '') RETURNING id",
                 [cluster, name, created, t0 + timedelta(hours=1)]).fetchone()[0]
               for name in MEMBERS]
    total = n + CRONS
    q("INSERT INTO scheduler_job (cluster_id, name, title, kind, command, working_directory, "
      "parameters, stateful, data_map, timeout_seconds, max_retries, retry_backoff_seconds, "
      "max_parallel, overlap_policy, recover_lost, affinity, executor, isolation, paused, "
      "created_at, updated_at) SELECT %s, 'job-' || lpad(i::text, 5, '0'), '', 'python', "
      "'bench.jobs:noop', '', '{}', false, '{}', NULL, 0, 10.0, 1, 'queue', true, '', 'node', "
      "'thread', false, %s, %s "
      "FROM generate_series(1, %s) i", [cluster, created, created, total])
    # Schedules 1..n: every second from t0; n+1..n+CRONS: minutely cron.
    q("INSERT INTO scheduler_schedule (cluster_id, job_id, title, kind, cron, timezone, "
      "interval_seconds, anchor_at, misfire_policy, misfire_grace_seconds, run_all_limit, "
      "paused, next_fire_at, version, created_at, updated_at) "
      "SELECT %s, j.id, '', CASE WHEN i <= %s THEN 'interval' ELSE 'cron' END, "
      "CASE WHEN i <= %s THEN '' ELSE '* * * * *' END, 'UTC', "
      "CASE WHEN i <= %s THEN 1 END, CASE WHEN i <= %s THEN %s::timestamptz END, 'run_once', "
      "5, 100, false, NULL, 1, %s, %s "
      "FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM scheduler_job) j ORDER BY i",
      [cluster, n, n, n, n, t0, created, created])
    ids = [r[0] for r in q("SELECT id FROM scheduler_schedule ORDER BY id").fetchall()]
    sched = dict(enumerate(ids, start=1))
    # The definition in force, as Schedule.save() records it.
    q("INSERT INTO scheduler_event (cluster_id, created_at, kind, actor, job_id, schedule_id, "
      "message, data) SELECT s.cluster_id, s.created_at, 'schedule.created', 'bench', s.job_id, "
      "s.id, 'schedule ' || s.id || ' created', jsonb_build_object('version', 1, 'definition', "
      "jsonb_build_object('kind', s.kind, 'cron', s.cron, 'timezone', s.timezone, "
      "'interval_seconds', s.interval_seconds, 'run_at', NULL, 'start_at', NULL, "
      "'end_at', NULL, 'misfire_policy', s.misfire_policy, 'misfire_grace_seconds', "
      "s.misfire_grace_seconds, 'run_all_limit', s.run_all_limit, 'anchor_at', "
      "to_char(s.anchor_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'))) "
      "FROM scheduler_schedule s ORDER BY s.id")
    # The ledger: a task per fire, started 1-40 ms late, on one of three members.
    q("SET session_replication_role = replica")  # no FK triggers while bulk loading
    log(f"inserting {n * HOUR:,} interval fires")
    q("INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
      "trigger, state, member_id, not_before, created_at, started_at, finished_at, exit_code, "
      "error, parameters, requested_by, cancel_reason) "
      "SELECT s.cluster_id, s.job_id, s.id, f.at, 1, 'schedule', 'succeeded', "
      "(%s::bigint[])[1 + (s.id + k) %% 3], NULL, f.at, "
      "f.at + ((1 + (s.id * 7 + k * 13) %% 40) * interval '1 millisecond'), "
      "f.at + ((11 + (s.id * 7 + k * 13) %% 40) * interval '1 millisecond'), 0, '', '{}', '', "
      "'' FROM scheduler_schedule s CROSS JOIN generate_series(0, %s - 1) k "
      "CROSS JOIN LATERAL (SELECT s.anchor_at + k * interval '1 second' AS at) f "
      "WHERE s.kind = 'interval' ORDER BY k, s.id", [members, HOUR])
    q("INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
      "trigger, state, member_id, created_at, started_at, finished_at, exit_code, error, "
      "parameters, requested_by, cancel_reason) "
      "SELECT s.cluster_id, s.job_id, s.id, %s::timestamptz + k * interval '1 minute', 1, "
      "'schedule', 'succeeded', (%s::bigint[])[1 + k %% 3], now(), "
      "%s::timestamptz + k * interval '1 minute' + interval '25 milliseconds', "
      "%s::timestamptz + k * interval '1 minute' + interval '60 milliseconds', 0, '', '{}', "
      "'', '' FROM scheduler_schedule s CROSS JOIN generate_series(0, 59) k "
      "WHERE s.kind = 'cron'", [t0, members, t0, t0])
    q("SET session_replication_role = DEFAULT")

    def at(k: float):
        return t0 + timedelta(seconds=k)

    def delete(sid: int, ks) -> None:
        q("DELETE FROM scheduler_task WHERE schedule_id = %s AND scheduled_for = ANY(%s)",
          [sched[sid], [at(k) for k in ks]])

    # MISSED: deleted by hand.
    delete(GAP[0], GAP[1])
    q("DELETE FROM scheduler_task WHERE schedule_id = %s AND scheduled_for = %s",
      [sched[n + CRON_GAP[0]], t0 + timedelta(minutes=CRON_GAP[1])])
    # An outage coalesced by run_once: the record, and the stand-in fire ran a minute late.
    sid, ks = OUTAGE
    delete(sid, ks)
    q("UPDATE scheduler_task SET started_at = scheduled_for + interval '60 seconds', "
      "finished_at = scheduled_for + interval '61 seconds' "
      "WHERE schedule_id = %s AND scheduled_for = %s", [sched[sid], at(ks[-1] + 1)])
    q("INSERT INTO scheduler_misfirerecord (cluster_id, schedule_id, first_fire_at, "
      "last_fire_at, fire_count, policy, reason, member_id, decided_at) "
      "VALUES (%s, %s, %s, %s, %s, 'run_once', 'run_once', %s, %s)",
      [cluster, sched[sid], at(ks[0]), at(ks[-1]), len(ks), members[0], at(ks[-1] + 1)])
    # A paused stretch: the job's pause and resume events, no tasks in between.
    sid, ks = PAUSE
    delete(sid, ks)
    job = q("SELECT job_id FROM scheduler_schedule WHERE id = %s", [sched[sid]]).fetchone()[0]
    for kind, when, who in (("job.paused", at(ks[0] - 0.5), "alice"),
                            ("job.resumed", at(ks[-1] + 0.7), "bob")):
        q("INSERT INTO scheduler_event (cluster_id, created_at, kind, actor, job_id, message, "
          "data) VALUES (%s, %s, %s, %s, %s, %s, '{}')", [cluster, when, kind, who, job, kind])
    # DOUBLE: attempt 2 "retrying" a task that succeeded.
    sid, k = DOUBLE_AT
    q("INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
      "trigger, state, member_id, created_at, started_at, finished_at, exit_code, error, "
      "parameters, requested_by, cancel_reason, retry_of_id) "
      "SELECT cluster_id, job_id, schedule_id, scheduled_for, 2, 'retry', 'succeeded', "
      "member_id, created_at, started_at + interval '2 seconds', finished_at "
      "+ interval '2 seconds', 0, '', '{}', '', '', id FROM scheduler_task "
      "WHERE schedule_id = %s AND scheduled_for = %s", [sched[sid], at(k)])
    # re-run: lost with its member, recovered on another.
    sid, k = RERUN_AT
    q("UPDATE scheduler_task SET state = 'lost', error = 'lost: member m1 died', "
      "lost_at = finished_at WHERE schedule_id = %s AND scheduled_for = %s",
      [sched[sid], at(k)])
    q("INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
      "trigger, state, member_id, created_at, started_at, finished_at, exit_code, error, "
      "parameters, requested_by, cancel_reason, retry_of_id) "
      "SELECT cluster_id, job_id, schedule_id, scheduled_for, 2, 'recovery', 'succeeded', "
      "%s, created_at, started_at + interval '6 seconds', finished_at + interval '6 seconds', "
      "0, '', '{}', 'm3', '', id FROM scheduler_task WHERE schedule_id = %s "
      "AND scheduled_for = %s", [members[2], sched[sid], at(k)])
    # Overlap skip.
    sid, k = SKIP_AT
    q("UPDATE scheduler_task SET state = 'skipped', member_id = NULL, started_at = NULL, "
      "error = 'skipped: the previous run was still going (overlap policy skip)' "
      "WHERE schedule_id = %s AND scheduled_for = %s", [sched[sid], at(k)])
    # UNEXPECTED: a task half a second off the grid.
    sid, k = ODD_AT
    q("INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
      "trigger, state, member_id, created_at, started_at, finished_at, exit_code, error, "
      "parameters, requested_by, cancel_reason) "
      "SELECT cluster_id, job_id, schedule_id, scheduled_for + interval '0.5 seconds', 1, "
      "'schedule', 'succeeded', member_id, created_at, started_at + interval '0.5 seconds', "
      "finished_at + interval '0.5 seconds', 0, '', '{}', '', '' FROM scheduler_task "
      "WHERE schedule_id = %s AND scheduled_for = %s", [sched[sid], at(k)])
    # Edited at second 1800: every 2 s from then (its odd seconds were never fired).
    sid, k = EDIT
    q("DELETE FROM scheduler_task WHERE schedule_id = %s AND scheduled_for >= %s AND "
      "(extract(epoch FROM scheduled_for - %s::timestamptz)::bigint %% 2) = 1",
      [sched[sid], at(k), at(k)])
    q("UPDATE scheduler_schedule SET interval_seconds = 2, anchor_at = %s, version = 2 "
      "WHERE id = %s", [at(k), sched[sid]])
    q("INSERT INTO scheduler_event (cluster_id, created_at, kind, actor, job_id, schedule_id, "
      "message, data) SELECT cluster_id, %s, 'schedule.changed', 'bench', job_id, id, "
      "'edited', jsonb_set(jsonb_set(e.data, '{definition,interval_seconds}', '2'), "
      "'{definition,anchor_at}', to_jsonb(%s::text)) || '{\"version\": 2}' "
      "FROM scheduler_schedule s, LATERAL (SELECT data FROM scheduler_event "
      "WHERE schedule_id = s.id) e WHERE s.id = %s",
      [at(k), at(k).isoformat(), sched[sid]])
    return {"t0": t0, "until": at(HOUR), "sched": sched}


# ---------------------------------------------------------------- running the audit


def django_setup(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="opsc_audit_bench")
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json-too", action="store_true",
                    help="Also time `auditfires --json` (every fire as a JSON line).")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="Audit the ledger a previous --keep-db run left (no rebuild).")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--out", help="Write the figures as JSON here.")
    args = ap.parse_args()
    busy = others_running()
    if busy and not args.force:
        raise SystemExit("another benchmark is running; try later (or --force):\n"
                         + "\n".join(busy))
    n = args.schedules
    if args.reuse:
        url = f"{PG}/{args.db}"
    else:
        log(f"creating database {args.db}")
        url = create_db(args.db)
    conn = psycopg.connect(url, autocommit=True)
    try:
        if args.reuse:
            row = conn.execute("SELECT min(anchor_at) FROM scheduler_schedule "
                               "WHERE kind = 'interval'").fetchone()
            plan = {"t0": row[0], "until": row[0] + timedelta(seconds=HOUR)}
        else:
            started = time.monotonic()
            plan = build(conn, n)
            log(f"ledger built in {time.monotonic() - started:.1f} s; vacuum analyze")
            conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT count(*) FROM scheduler_task").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('scheduler_task'))"
                            ).fetchone()[0]
        log(f"{rows:,} task rows ({size})")
        figures = run(url, args, plan, n, rows, size)
    finally:
        conn.close()
        if not args.keep_db and not args.reuse:
            drop_db(args.db)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, indent=2, default=str))
    if not figures["verdicts_as_planned"]:
        raise SystemExit(1)


def run(url: str, args, plan: dict, n: int, rows: int, size: str) -> dict:
    django_setup(url)
    from scheduler import audit
    from scheduler.models import Cluster

    cluster = Cluster.objects.get(name=CLUSTER)
    since, until = plan["t0"], plan["until"]
    times, result = [], None
    for i in range(args.runs):
        started = time.perf_counter()
        result = audit.audit(cluster, since, until)
        times.append(time.perf_counter() - started)
        log(f"audit run {i + 1}: {times[-1]:.2f} s ({result.owed:,} owed fires)")
    want = expected(n)
    got = {k: v for k, v in result.counts.items()}
    ok = got == want
    log(f"verdicts {'as planned' if ok else 'NOT as planned'}: {got}")
    if not ok:
        log(f"expected: {want}")
    exceptions = list(result.exceptions())
    # The command end to end: a new process, Django start-up, the summary and the table.
    env = {**os.environ, "DATABASE_URL": url}
    cmd = [sys.executable, str(ROOT / "manage.py"), "auditfires", "--cluster", CLUSTER,
           "--since", since.isoformat(), "--until", until.isoformat()]
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    command_s = time.perf_counter() - started
    log(f"auditfires end to end: {command_s:.2f} s, exit status {out.returncode}")
    figures = {
        "schedules": n + CRONS, "task_rows": rows, "task_table": size,
        "owed_fires": result.owed, "audit_seconds": [round(t, 3) for t in times],
        "audit_seconds_median": round(statistics.median(times), 3),
        "command_seconds": round(command_s, 3), "command_exit_status": out.returncode,
        "command_output_lines": len(out.stdout.splitlines()),
        "counts": got, "expected": want, "verdicts_as_planned": ok and out.returncode == 1,
        "not_plainly_ran": len(exceptions), "lateness": result.lateness,
        "members": result.members, "warnings": result.warnings,
    }
    if args.json_too:
        started = time.perf_counter()
        with open(os.devnull, "w") as sink:
            js = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.PIPE, text=True, timeout=1800)
        figures["json_seconds"] = round(time.perf_counter() - started, 3)
        figures["json_exit_status"] = js.returncode
        log(f"auditfires --json: {figures['json_seconds']:.1f} s")
    return figures


if __name__ == "__main__":
    main()
