"""What the benchmarks share: a database of their own, bulk-loaded schedules, real member
processes, a sampler (CPU, memory, pg_stat_activity) and the ledger counts in set-based SQL.

Every figure is read on the database's clock (the ledger's `scheduled_for` and `started_at`,
events' `created_at`, `clock_timestamp()` just before a signal is sent).
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DEFAULT_DB = "opsc_bench"
CLUSTER = "bench"
# Databases that belong to others (the default maintenance DB, the test suite, developers).
FORBIDDEN = re.compile(r"^(postgres|template\d*|test.*|opsc_dev|opsc_me)$")
STOP_LINE = re.compile(
    r"member (\S+) stopped \((\d+) started, (\d+) finished, (\d+) misfired; (\d+) claims "
    r"taking ([\d.]+) s\)"
)


def stop_on_sigterm() -> None:
    """SIGTERM ends a benchmark like Ctrl-C: its `finally` blocks stop the members it started
    and drop its database, instead of leaving them behind."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the database


class BenchDB:
    """A database of the bench's own: created and migrated once, truncated between runs."""

    def __init__(self, name: str = DEFAULT_DB, keep: bool = False):
        if FORBIDDEN.match(name):
            raise SystemExit(f"refusing to use database {name!r}: it is not the bench's own")
        self.name = name
        self.url = f"{PG}/{name}"
        self.keep = keep
        self.conn: psycopg.Connection | None = None

    def create(self) -> None:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')
        log(f"database {self.name} created; migrating")
        out = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input", "-v", "0"],
            cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=300,
        )
        if out.returncode:
            raise SystemExit(f"migrate failed:\n{out.stdout}\n{out.stderr}")
        self.conn = psycopg.connect(self.url, autocommit=True)

    VARIANTS = ("sync-off", "no-task-fks", "no-task-cluster-fk", "lean-task-indexes")

    def apply_variant(self, names: list[str]) -> None:
        """Experiments on the bench's own database, to see what a cost is made of:
        sync-off           synchronous_commit = off for this database's sessions
        no-task-fks        the task table without its (deferred) foreign keys
        no-task-cluster-fk the task table without the one to the cluster (every task of a
                           cluster references, and locks FOR KEY SHARE, the same row)
        lean-task-indexes  the task table with only the indexes the hot path reads
        """
        for name in names:
            if name == "sync-off":
                self.q(f'ALTER DATABASE "{self.name}" SET synchronous_commit = off')
            elif name == "no-task-fks":
                for (con,) in self.q("SELECT conname FROM pg_constraint WHERE conrelid = "
                                     "'scheduler_task'::regclass AND contype = 'f'"):
                    self.q(f'ALTER TABLE scheduler_task DROP CONSTRAINT "{con}"')
            elif name == "no-task-cluster-fk":
                for (con,) in self.q("SELECT conname FROM pg_constraint WHERE conrelid = "
                                     "'scheduler_task'::regclass AND contype = 'f' "
                                     "AND confrelid = 'scheduler_cluster'::regclass"):
                    self.q(f'ALTER TABLE scheduler_task DROP CONSTRAINT "{con}"')
            elif name == "lean-task-indexes":
                keep = ("scheduler_task_pkey", "task_one_per_fire_attempt", "task_queued",
                        "task_job_running", "task_member_running")
                for (idx,) in self.q("SELECT indexname FROM pg_indexes WHERE tablename = "
                                     "'scheduler_task'"):
                    if idx not in keep:
                        self.q(f'DROP INDEX "{idx}"')
            else:
                raise SystemExit(f"unknown variant {name!r}: one of {', '.join(self.VARIANTS)}")
            log(f"variant applied: {name}")

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.keep:
            log(f"database {self.name} kept (--keep-db)")
            return
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTER_")}
        env.update(DATABASE_URL=self.url, PYTHONUNBUFFERED="1",
                   DJANGO_SETTINGS_MODULE="opscenter.settings")
        # The default and production settings (DEBUG off); DEBUG=true in the bench's own
        # environment measures a development machine instead.
        env.setdefault("DEBUG", "false")
        return env

    def q(self, sql: str, params=None) -> list[tuple]:
        cur = self.conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def one(self, sql: str, params=None):
        return self.q(sql, params)[0]

    def now(self) -> datetime:
        return self.one("SELECT clock_timestamp()")[0]

    def reset(self) -> None:
        tables = [r[0] for r in self.q(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename LIKE 'scheduler\\_%'")]
        self.q("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE")

    def load(self, n: int, far: float = 3600.0) -> int:
        """A cluster with n no-op python jobs, each with a one-second interval schedule whose
        first fire is far away (`arm` brings it close once the members are up). Bulk: one
        INSERT per table, as bulk_create would, not Schedule.save() per row."""
        self.reset()
        cluster_id = self.one(
            "INSERT INTO scheduler_cluster (name, description, mode, lease_epoch, created_at) "
            "VALUES (%s, '', '', 0, now()) RETURNING id", [CLUSTER])[0]
        self.q(
            "INSERT INTO scheduler_job (cluster_id, name, title, kind, command, "
            "working_directory, parameters, stateful, data_map, timeout_seconds, max_retries, "
            "retry_backoff_seconds, max_parallel, overlap_policy, recover_lost, affinity, "
            "executor, isolation, paused, created_at, updated_at) "
            "SELECT %s, 'noop-' || i, '', 'python', 'bench.jobs:noop', '', '{}', false, '{}', "
            "NULL, 0, 10.0, 1, 'queue', true, '', 'node', 'thread', false, now(), now() "
            "FROM generate_series(1, %s) i", [cluster_id, n])
        self.q(
            "INSERT INTO scheduler_schedule (cluster_id, job_id, title, kind, cron, timezone, "
            "interval_seconds, anchor_at, misfire_policy, misfire_grace_seconds, run_all_limit, "
            "paused, next_fire_at, version, created_at, updated_at) "
            "SELECT cluster_id, id, '', 'interval', '', 'UTC', 1, "
            "date_trunc('second', now()) + %s * interval '1 second', 'run_once', 5, 100, false, "
            "date_trunc('second', now()) + %s * interval '1 second', 1, now(), now() "
            "FROM scheduler_job WHERE cluster_id = %s ORDER BY id", [far, far, cluster_id])
        self.q("ANALYZE")
        return cluster_id

    def arm(self, cluster_id: int, lead: float = 2.0, spread: bool = False) -> datetime:
        """Move every schedule's anchor and first fire to the next whole second at least
        `lead` s away (with `spread`, the anchors are spread evenly over that second), wake
        the members, and return that second (the first fire)."""
        start = self.one("SELECT date_trunc('second', clock_timestamp() + %s * interval "
                         "'1 second') + interval '1 second'", [lead])[0]
        self.q(
            "UPDATE scheduler_schedule s SET anchor_at = a.at, next_fire_at = a.at "
            "FROM (SELECT id, %s::timestamptz + CASE WHEN %s THEN (row_number() OVER "
            "(ORDER BY id) - 1) * interval '1 second' / count(*) OVER () ELSE interval '0' "
            "END AS at FROM scheduler_schedule WHERE cluster_id = %s) a WHERE s.id = a.id",
            [start, spread, cluster_id])
        self.q("ANALYZE scheduler_schedule")
        self.q("SELECT pg_notify('opscenter', %s)", [str(cluster_id)])
        return start

    def members(self) -> dict[str, dict]:
        rows = self.q("SELECT id, name, state FROM scheduler_member ORDER BY id")
        out: dict[str, dict] = {}
        for mid, name, state in rows:
            out[name] = {"id": mid, "state": state}  # the latest row of a name wins
        return out

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


# ---------------------------------------------------------------- member processes


class MemberProcess:
    """A real `manage.py runscheduler` process."""

    def __init__(self, db: BenchDB, name: str, args: list[str], logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        # With BENCH_PROTOTYPES set (fires.py --prototype), through bench/patched.py.
        entry = (["-m", "bench.patched"] if os.environ.get("BENCH_PROTOTYPES")
                 else [str(ROOT / "manage.py")])
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "runscheduler", "--cluster", CLUSTER,
             "--node", name, *args],
            cwd=ROOT, env=db.env(), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (after a SIGCONT, in case it is frozen) and wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"member {self.name} did not stop within {timeout:g} s; killing it")
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop_stats(self) -> dict | None:
        found = STOP_LINE.findall(self.output())
        if not found:
            return None
        _, started, finished, misfired, claims, secs = found[-1]
        return {"started": int(started), "finished": int(finished), "misfired": int(misfired),
                "claims": int(claims), "claim_seconds": float(secs)}


def logdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"opsc-{prefix}-"))


# ---------------------------------------------------------------- sampling


@dataclass
class Sample:
    at: float  # database clock, epoch seconds (estimated from this machine's clock)
    members: dict[str, tuple[float, float]]  # name -> (cpu % of one core, rss MB)
    postgres_cpu: float  # all postgres processes, % of one core
    machine_cpu: float  # whole machine, % of all cores
    bench_cpu: float  # this process, % of one core


@dataclass
class Sampler:
    """Every `every` s: each member's CPU and RSS, PostgreSQL's CPU, the machine's CPU; and
    (every `activity_every` s) what each member's database session is doing."""

    members: list[MemberProcess]
    db_url: str
    db_offset: float  # database clock minus this machine's clock, seconds
    every: float = 0.5
    activity_every: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    db_name: str = DEFAULT_DB
    activity: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._sample_cpu, self._sample_activity):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _sample_cpu(self) -> None:
        pg: dict[int, psutil.Process] = {}
        me = psutil.Process()
        me.cpu_percent(None)
        psutil.cpu_percent(None)
        for m in self.members:
            try:
                m.ps.cpu_percent(None)
            except psutil.Error:
                pass
        while not self._stop.wait(self.every):
            per: dict[str, tuple[float, float]] = {}
            for m in self.members:
                try:
                    if m.ps.status() == psutil.STATUS_ZOMBIE:
                        continue
                    per[m.name] = (m.ps.cpu_percent(None), m.ps.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            total_pg = 0.0
            for p in psutil.process_iter(["name"]):
                if not (p.info["name"] or "").startswith("postgres"):
                    continue
                if p.pid not in pg:
                    try:
                        title = " ".join(p.cmdline())
                    except psutil.Error:
                        continue
                    # Ours: the backends of our database and the server's own processes
                    # (WAL writer, checkpointer, autovacuum...); other databases' backends
                    # (someone's test run) count as others'.
                    client = "(" in title or "[local]" in title
                    pg[p.pid] = p if (not client or f" {self.db_name} " in title) else None
                    if pg[p.pid] is not None:
                        try:
                            pg[p.pid].cpu_percent(None)
                        except psutil.Error:  # a short-lived session, ended meanwhile
                            pg.pop(p.pid, None)
                    continue
                known = pg[p.pid]
                if known is None:
                    continue
                try:
                    total_pg += known.cpu_percent(None)
                except psutil.Error:
                    pg.pop(p.pid, None)
            self.samples.append(Sample(time.time() + self.db_offset, per, total_pg,
                                       psutil.cpu_percent(None), me.cpu_percent(None)))

    def _sample_activity(self) -> None:
        try:
            conn = psycopg.connect(self.db_url, autocommit=True)
        except psycopg.Error as exc:
            log(f"pg_stat_activity sampler: {exc}")
            return
        sql = ("SELECT application_name, state, coalesce(wait_event_type || ':' || wait_event, "
               "'CPU'), left(regexp_replace(query, '\\s+', ' ', 'g'), 200) "
               "FROM pg_stat_activity WHERE datname = current_database() "
               "AND application_name LIKE 'opscenter %%' "
               "AND application_name NOT LIKE '%% listen' AND pid <> pg_backend_pid()")
        with conn:
            while not self._stop.wait(self.activity_every):
                at = time.time() + self.db_offset
                try:
                    rows = conn.execute(sql).fetchall()
                except psycopg.Error:
                    continue
                for app, state, wait, query in rows:
                    member = app.split("/", 1)[-1]
                    self.activity.append((at, member, state or "?", wait, query))

    def summary(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s.at <= t1]
        per: dict[str, dict] = {}
        for m in self.members:
            cpu = [s.members[m.name][0] for s in inside if m.name in s.members]
            rss = [s.members[m.name][1] for s in inside if m.name in s.members]
            per[m.name] = {"cpu_pct": round(statistics.fmean(cpu), 1) if cpu else None,
                           "rss_mb_max": round(max(rss), 1) if rss else None}
        acts = [a for a in self.activity if t0 <= a[0] <= t1]
        by_member: dict[str, Counter] = defaultdict(Counter)
        queries: Counter = Counter()
        for _, member, state, wait, query in acts:
            key = state if state != "active" else f"active ({wait})"
            by_member[member][key] += 1
            if state == "active":
                queries[_query_kind(query)] += 1
        activity = {
            member: {k: round(v / sum(c.values()), 3) for k, v in c.most_common()}
            for member, c in sorted(by_member.items())
        }
        total_active = sum(queries.values())
        ncpu = psutil.cpu_count() or 1
        others = [s.machine_cpu * ncpu - sum(c for c, _ in s.members.values()) - s.postgres_cpu
                  - s.bench_cpu for s in inside]
        return {
            # Whatever else ran on the machine meanwhile (% of one core): should be near 0.
            "other_cpu_pct": _mean(others),
            "members": per,
            "postgres_cpu_pct": _mean([s.postgres_cpu for s in inside]),
            "machine_cpu_pct": _mean([s.machine_cpu for s in inside]),
            "bench_cpu_pct": _mean([s.bench_cpu for s in inside]),
            "samples": len(inside),
            "session_states": activity,
            "active_queries": {k: round(v / total_active, 3) for k, v in queries.most_common(8)}
            if total_active else {},
        }


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


def _query_kind(query: str) -> str:
    q = query.lower()
    for needle, name in (
        ("select t.id, t.job_id, t.schedule_id", "claim: queued tasks (skip locked)"),
        ("select s.id, s.job_id, s.version", "claim: due schedules (skip locked)"),
        ("select j.id, j.name, j.kind", "claim: lock jobs + running counts"),
        ("insert into scheduler_task", "claim: insert fire tasks"),
        ("update scheduler_schedule as s", "claim: advance next_fire_at"),
        ("update scheduler_task as t", "record finished"),
        ("from scheduler_cluster where", "fence: lease"),
        ("from scheduler_member where", "fence: membership"),
        ("min(", "next_wake"),
        ("update \"scheduler_member\"", "heartbeat"),
        ("pg_locks", "detect dead (pg_locks)"),
        ("commit", "commit"),
        ("clock_timestamp", "clock"),
    ):
        if needle in q:
            return name
    return query[:50]


# ---------------------------------------------------------------- the ledger's verdict

OWED = """
WITH owed AS (
    SELECT s.id AS sid, s.anchor_at + k * s.interval_seconds * interval '1 second' AS at
    FROM scheduler_schedule s,
    LATERAL generate_series(
        greatest(ceil(extract(epoch FROM %(w0)s::timestamptz - s.anchor_at)
                      / s.interval_seconds), 0)::bigint,
        (ceil(extract(epoch FROM %(w1)s::timestamptz - s.anchor_at)
              / s.interval_seconds) - 1)::bigint) AS k
    WHERE s.cluster_id = %(c)s AND s.kind = 'interval'
), verdict AS (
    SELECT o.sid, o.at, t.id AS task_id, t.state, t.started_at,
           o.at >= (SELECT s.next_fire_at FROM scheduler_schedule s WHERE s.id = o.sid)
               AS undecided,
           EXISTS (SELECT 1 FROM scheduler_misfirerecord m WHERE m.schedule_id = o.sid
                   AND o.at BETWEEN m.first_fire_at AND m.last_fire_at) AS misfired
    FROM owed o LEFT JOIN scheduler_task t
      ON t.schedule_id = o.sid AND t.scheduled_for = o.at AND t.attempt = 1
)
SELECT count(*) AS owed,
       count(*) FILTER (WHERE started_at IS NOT NULL) AS ran,
       count(*) FILTER (WHERE task_id IS NULL AND misfired) AS misfired,
       count(*) FILTER (WHERE task_id IS NULL AND NOT misfired AND NOT undecided) AS missed,
       count(*) FILTER (WHERE task_id IS NULL AND NOT misfired AND undecided) AS pending,
       min(at) FILTER (WHERE task_id IS NULL AND NOT misfired AND undecided) AS oldest_pending,
       count(*) FILTER (WHERE task_id IS NOT NULL AND started_at IS NULL) AS not_started,
       count(*) FILTER (WHERE task_id IS NOT NULL AND misfired) AS ran_and_misfired
FROM verdict
"""

DUPLICATES = """
SELECT count(*), coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM scheduler_task
    WHERE cluster_id = %(c)s AND schedule_id IS NOT NULL AND attempt = 1
    GROUP BY schedule_id, scheduled_for HAVING count(*) > 1) d
"""

OFF_GRID = """
SELECT count(*) FROM scheduler_task t JOIN scheduler_schedule s ON s.id = t.schedule_id
WHERE t.cluster_id = %(c)s AND t.scheduled_for >= s.anchor_at
  AND mod(extract(epoch FROM t.scheduled_for - s.anchor_at)::numeric, s.interval_seconds) <> 0
"""

LATENESS = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY l) * 1000,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY l) * 1000,
       max(l) * 1000
FROM (SELECT extract(epoch FROM started_at - scheduled_for) AS l FROM scheduler_task
      WHERE cluster_id = %(c)s AND trigger = 'schedule' AND attempt = 1
        AND started_at IS NOT NULL
        AND scheduled_for >= %(w0)s AND scheduled_for < %(w1)s) x
"""

PER_MEMBER = """
SELECT m.name, count(*) FROM scheduler_task t JOIN scheduler_member m ON m.id = t.member_id
WHERE t.cluster_id = %(c)s AND t.started_at IS NOT NULL
  AND t.scheduled_for >= %(w0)s AND t.scheduled_for < %(w1)s
GROUP BY m.name ORDER BY m.name
"""


def verdict(db: BenchDB, cluster_id: int, w0: datetime, w1: datetime) -> dict:
    """Owed fires of the window [w0, w1) against the ledger, and the whole run's duplicates."""
    p = {"c": cluster_id, "w0": w0, "w1": w1}
    owed, ran, misfired, missed, pending, oldest, not_started, both = db.one(OWED, p)
    dup_keys, dup_extra = db.one(DUPLICATES, p)
    n, p50, p99, mx = db.one(LATENESS, p)
    recoveries = db.one("SELECT count(*) FROM scheduler_task WHERE cluster_id = %(c)s "
                        "AND attempt > 1", p)[0]
    return {
        "owed": owed, "ran": ran, "misfired": misfired, "missed": missed,
        # Owed fires no member had reached when the members stopped (the schedule's
        # next_fire_at is still at or before them): not lost, but not decided either.
        "pending_at_stop": pending, "oldest_pending": oldest,
        "not_started": not_started, "ran_and_in_misfire_range": both,
        "duplicates": int(dup_extra), "duplicate_keys": dup_keys,
        "off_grid": db.one(OFF_GRID, p)[0], "recovery_runs": recoveries,
        "lateness_ms": {"n": n, "p50": _r(p50), "p99": _r(p99), "max": _r(mx)},
        "fires_per_member": dict(db.q(PER_MEMBER, p)),
    }


def _r(x) -> float | None:
    return None if x is None else round(float(x), 1)


# ---------------------------------------------------------------- output


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells]
    return "\n".join([line, sep, *body])


def write_json(path: str | None, data) -> None:
    text = json.dumps(data, indent=2, default=str)
    if path:
        Path(path).write_text(text + "\n")
        log(f"JSON written to {path}")
    print(text)


def machine() -> dict:
    pg = ""
    try:
        with psycopg.connect(f"{PG}/postgres") as c:
            pg = c.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        pass
    return {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": sys.version.split()[0], "postgresql": pg,
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            "members_DEBUG": os.environ.get("DEBUG", "false"),
            "prototypes": os.environ.get("BENCH_PROTOTYPES", ""), "tree": tree()}


def tree() -> dict:
    """The code measured: commit, and the files changed in the work tree (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def wait_idle(max_wait: float = 180.0, busy_pct: float = 15.0) -> dict:
    """Wait (up to `max_wait` s) until the machine has been quiet for 3 s: others' test runs on
    a shared 2-core machine would otherwise be measured too. Returns what was seen."""
    began = time.monotonic()
    last = 100.0
    while time.monotonic() - began < max_wait:
        last = psutil.cpu_percent(interval=3.0)
        if last < busy_pct:
            break
    waited = round(time.monotonic() - began, 1)
    if last >= busy_pct:
        log(f"the machine is still busy ({last:.0f} % CPU) after {waited:g} s; measuring anyway")
    return {"waited_s": waited, "machine_cpu_pct_before": round(last, 1)}


def sleep_until(db_time: datetime, db_offset: float) -> None:
    left = db_time.timestamp() - (time.time() + db_offset)
    if left > 0:
        time.sleep(left)


def offset(db: BenchDB) -> float:
    before = time.time()
    now = db.now().timestamp()
    after = time.time()
    return now - (before + after) / 2


def seconds(td: timedelta | None) -> float | None:
    return None if td is None else round(td.total_seconds(), 3)
