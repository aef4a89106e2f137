"""Executors that hand work away: Celery and django.tasks, one node, on PostgreSQL.

    .venv/bin/python bench/executors.py [--runs celery:50,celery:200,task:50,task:200,inflight]
                                        [--seconds 20] [--db-workers 2] [--json out.json]

A job of executor `celery` is sent by the node's pool thread to a Celery worker
(`celery -A opscenter worker --pool threads`, Redis broker, a queue of the bench's own); a job
of kind `task` is enqueued on django-tasks-db and run by `manage.py db_worker` processes. In
both cases the pool thread only sends, and the node's loop follows every task in flight with
one query per poll (Celery 0.5 s, django.tasks 0.25 s). Each run: a fresh ledger, the workers,
one `runscheduler` member, N one-second schedules armed at once (all on the same second),
3 s of warm-up, a window of --seconds, then the schedules are paused and the tasks in flight
are given --drain s to end. Judged from the ledger on the database's clock:

  celery:N    N schedules of a no-op python job (`bench.jobs:noop`) on a Celery worker with
              --concurrency threads; the node's default pool (100)
  task:N      N schedules of a no-op django.tasks function (`scheduler.demo_tasks.add`),
              --db-workers db_worker processes (each runs one task at a time)
  inflight    --inflight-schedules schedules of a 2 s python job (`bench.jobs:sleep`,
              max_parallel 4) on Celery (--inflight-concurrency threads), a node with
              --workers 8: how many tasks it keeps in flight at once (far more than 8 shows
              that no pool slot is held while a task is away)

Figures:
  ended/s     tasks that ended succeeded with their end recorded inside the window, per
              second (the steady rate; asked: N/s)
  window      fires owed in the window: succeeded, another end, not ended when the run
              stopped, duplicates (second attempt-1 task of a fire), missed (lost fires)
  latency     from the fire's due instant (scheduled_for): to the worker's start (celery: the
              task's started_at, written by the worker; task: the django.tasks result's
              started_at) and to the end recorded (the task's finished_at: celery, the
              worker's write; task, the node's after its look), p50 / p99 / max
  in flight   the most tasks running on the workers at once (ledger: overlap of worker start
              .. worker end), and the most the node held running (sampled every 0.1 s)
  CPU / RSS   the node's, the workers', PostgreSQL's and others' (% of one core), as in
              fires.py; others' above --max-other repeats the run (--retries)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psutil
import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import BenchDB, MemberProcess, Sampler, log

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")
TASK_FUNCTION = "scheduler.demo_tasks.add"


class ExecutorsDB(BenchDB):
    """The bench's database, and the broker the members and the Celery workers share."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env["OPSCENTER_CELERY_BROKER"] = BROKER
        return env

    def reset(self) -> None:
        super().reset()
        self.q("TRUNCATE django_tasks_database_dbtaskresult")


class WorkerProcess:
    """A Celery worker or a db_worker: started and sampled like a member (name, ps, stop)."""

    def __init__(self, name: str, argv: list[str], db: BenchDB, logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=harness.ROOT, env=db.env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (a warm shutdown), SIGKILL of its group if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
            return None
        finally:
            self._log.close()


def celery_worker(db: BenchDB, queue: str, concurrency: int, logdir: Path) -> WorkerProcess:
    return WorkerProcess("celery", [
        sys.executable, "-m", "celery", "-A", "opscenter", "worker", "--pool", "threads",
        "--concurrency", str(concurrency), "-Q", queue, "-n", f"{queue}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
        db, logdir)


def db_worker(db: BenchDB, number: int, logdir: Path) -> WorkerProcess:
    return WorkerProcess(f"dbw{number}", [
        sys.executable, str(harness.ROOT / "manage.py"), "db_worker", "--interval", "0.1",
        "--no-startup-delay", "--no-reload"], db, logdir)


def delete_queue(queue: str) -> None:
    """The bench's queue (and whatever is left in it) off the broker."""
    try:
        from kombu import Connection

        with Connection(BROKER, connect_timeout=3) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # a bench's tidy-up: say it, do not fail the figures
        log(f"could not delete the queue {queue}: {exc}")


def shape_jobs(db: BenchDB, cluster_id: int, executor: str, queue: str,
               job_seconds: float | None) -> None:
    """The loaded no-op python jobs become the run's: sent to Celery, or django.tasks tasks."""
    if executor == "celery":
        if job_seconds:
            db.q("UPDATE scheduler_job SET executor = 'celery', celery_queue = %s, "
                 "command = 'bench.jobs:sleep', parameters = %s::jsonb, max_parallel = 4 "
                 "WHERE cluster_id = %s",
                 [queue, f'{{"seconds": {job_seconds}}}', cluster_id])
        else:
            db.q("UPDATE scheduler_job SET executor = 'celery', celery_queue = %s "
                 "WHERE cluster_id = %s", [queue, cluster_id])
    else:
        db.q("UPDATE scheduler_job SET kind = 'task', command = %s WHERE cluster_id = %s",
             [TASK_FUNCTION, cluster_id])


# Each succeeded task of the window: its due instant, the worker's start and end, the recorded
# end. celery: the worker writes started_at and finished_at itself; task: the result's times
# (written by the db_worker on this machine's clock, the database's host), the task's
# started_at is the enqueue and finished_at the node's recording after its look.
TIMES = {
    "celery": """
        SELECT t.scheduled_for AS due, t.started_at AS worker_start, t.finished_at AS worker_end,
               t.finished_at AS recorded, t.claimed_at, t.started_at AS handed
        FROM scheduler_task t WHERE t.cluster_id = %(c)s""",
    "task": """
        SELECT t.scheduled_for AS due, r.started_at AS worker_start, r.finished_at AS worker_end,
               t.finished_at AS recorded, t.claimed_at, t.started_at AS handed
        FROM scheduler_task t LEFT JOIN django_tasks_database_dbtaskresult r
          ON r.id::text = t.external_id WHERE t.cluster_id = %(c)s""",
}
LATENCY = """
WITH x AS ({times} AND t.attempt = 1 AND t.trigger = 'schedule' AND t.state = 'succeeded'
           AND t.scheduled_for >= %(w0)s AND t.scheduled_for < %(w1)s)
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM worker_start - due) * 1000),
       max(extract(epoch FROM worker_start - due)) * 1000,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM recorded - due) * 1000),
       max(extract(epoch FROM recorded - due)) * 1000,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM handed - due) * 1000),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
           extract(epoch FROM worker_end - worker_start) * 1000)
FROM x
"""
# The most tasks running on the workers at once over the whole run: +1 at each worker start,
# -1 at each worker end (ends first on a tie).
CONCURRENCY = """
WITH x AS ({times} AND t.started_at IS NOT NULL),
     e AS (SELECT worker_start AS at, 1 AS d FROM x WHERE worker_start IS NOT NULL
           UNION ALL SELECT worker_end, -1 FROM x
           WHERE worker_start IS NOT NULL AND worker_end IS NOT NULL)
SELECT coalesce(max(n), 0) FROM (SELECT sum(d) OVER (ORDER BY at, d ROWS UNBOUNDED PRECEDING)
                                 AS n FROM e) s
"""
WINDOW = """
SELECT coalesce(sum(n) FILTER (WHERE state = 'succeeded'), 0),
       coalesce(sum(n) FILTER (WHERE state NOT IN ('succeeded', 'running', 'queued')), 0),
       coalesce(sum(n) FILTER (WHERE state IN ('running', 'queued')), 0),
       coalesce(jsonb_object_agg(state, n), '{}')
FROM (SELECT state, count(*) AS n FROM scheduler_task
      WHERE cluster_id = %(c)s AND attempt = 1 AND trigger = 'schedule'
        AND scheduled_for >= %(w0)s AND scheduled_for < %(w1)s GROUP BY state) x
"""
ENDED_IN_WINDOW = """
SELECT count(*) FROM scheduler_task WHERE cluster_id = %(c)s AND state = 'succeeded'
  AND finished_at >= %(w0)s AND finished_at < %(w1)s
"""
ERRORS = """
SELECT state, left(error, 160), count(*) FROM scheduler_task
WHERE cluster_id = %(c)s AND state NOT IN ('succeeded', 'running', 'queued')
GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5
"""


class InFlight:
    """Every 0.1 s, how many tasks the node holds running (claimed, not ended): its own view of
    what is in flight, whatever the workers do with them."""

    def __init__(self, url: str, offset: float):
        self.url, self.offset = url, offset
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.1):
                n = conn.execute("SELECT count(*) FROM scheduler_task "
                                 "WHERE state = 'running'").fetchone()[0]
                self.samples.append((time.time() + self.offset, n))

    def summary(self, t0: float, t1: float) -> dict:
        inside = [n for at, n in self.samples if t0 <= at <= t1]
        return {"max": max(inside, default=None),
                "mean": round(statistics.fmean(inside), 1) if inside else None}


def run_one(db: BenchDB, *, executor: str, schedules: int, args, workers: int | None = None,
            concurrency: int | None = None, job_seconds: float | None = None) -> dict:
    idle = harness.wait_idle(max_wait=args.idle_wait)
    tag = f"{executor}-{schedules}" + ("-inflight" if job_seconds else "")
    ldir = harness.logdir(f"executors-{tag}")
    queue = f"opsc-bench-{uuid.uuid4().hex[:8]}"
    cluster_id = db.load(schedules)
    shape_jobs(db, cluster_id, executor, queue, job_seconds)
    concurrency = concurrency or args.concurrency
    if executor == "celery":
        pool = [celery_worker(db, queue, concurrency, ldir)]
    else:
        pool = [db_worker(db, i + 1, ldir) for i in range(args.db_workers)]
    node_args = ["--workers", str(workers)] if workers else []
    node = MemberProcess(db, "m1", node_args, ldir)
    p = {"c": cluster_id}
    sampler = flight = None
    try:
        db.wait_for(lambda: db.members().get("m1", {}).get("state") == "active", 60,
                    f"the member to join (log: {node.log_path})")
        if executor == "celery":
            db.wait_for(lambda: " ready." in pool[0].output(), 60,
                        f"the Celery worker (log: {pool[0].log_path})")
        else:
            # A db_worker says nothing when it is up: its session on the database says it.
            db.wait_for(lambda: db.one(
                "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND query LIKE '%%django_tasks_database_dbtaskresult%%'")[0]
                >= len(pool), 60, "the db_workers to poll")
        for w in pool:
            if not w.alive():
                raise RuntimeError(f"{w.name} ended at start:\n{w.output()[-2000:]}")
        off = harness.offset(db)
        sampler = Sampler([node, *pool], db.url, off, db_name=db.name)
        sampler.start()
        flight = InFlight(db.url, off)
        flight.start()
        start = db.arm(cluster_id, lead=2.0)
        w0 = start + timedelta(seconds=args.warmup)
        w1 = w0 + timedelta(seconds=args.seconds)
        log(f"{tag}: {schedules} schedules from {start:%H:%M:%S}, window "
            f"{w0:%H:%M:%S}-{w1:%H:%M:%S}")
        harness.sleep_until(w0, off)
        sessions0 = _sessions(db)
        harness.sleep_until(w1, off)
        sessions1 = _sessions(db)
        db.q("UPDATE scheduler_schedule SET paused = true WHERE cluster_id = %s", [cluster_id])
        db.q("SELECT pg_notify('opscenter', %s)", [str(cluster_id)])
        try:
            db.wait_for(lambda: db.one("SELECT count(*) FROM scheduler_task WHERE cluster_id "
                                       "= %s AND state IN ('running', 'queued')",
                                       [cluster_id])[0] == 0,
                        args.drain, "the tasks in flight to end")
        except RuntimeError as exc:
            log(str(exc))
        drained_at = db.now()
    finally:
        if flight:
            flight.stop()
        if sampler:
            sampler.stop()
        code = node.stop()
        codes = {"m1": code, **{w.name: w.stop() for w in pool}}
        if executor == "celery":
            delete_queue(queue)
    p.update(w0=w0, w1=w1)
    v = harness.verdict(db, cluster_id, w0, w1)
    succeeded, other_end, not_ended, states = db.one(WINDOW, p)
    ended_in_window = db.one(ENDED_IN_WINDOW, p)[0]
    times = TIMES[executor]
    n, start_q, start_max, rec_q, rec_max, handed_q, run_q = db.one(
        LATENCY.format(times=times), p)
    busiest = db.one(CONCURRENCY.format(times=times), p)[0]
    usage = sampler.summary(w0.timestamp(), w1.timestamp())
    mem = usage["members"]
    return {
        "run": tag, "executor": executor, "schedules": schedules,
        "node_workers": workers or "default (100)",
        "worker": (f"celery --pool threads --concurrency {concurrency}" if executor == "celery"
                   else f"{args.db_workers} x db_worker"),
        "job": ("bench.jobs:sleep " + f"{job_seconds:g} s" if job_seconds
                else "bench.jobs:noop" if executor == "celery" else TASK_FUNCTION),
        "seconds": args.seconds, "asked_per_s": schedules,
        "ended_per_s": round(ended_in_window / args.seconds, 1),
        "owed": v["owed"], "succeeded": succeeded, "other_end": other_end,
        "not_ended_at_stop": not_ended, "states": states,
        "duplicates": v["duplicates"], "missed": v["missed"], "misfired": v["misfired"],
        "pending_at_stop": v["pending_at_stop"], "recovery_runs": v["recovery_runs"],
        "errors": [list(r) for r in db.q(ERRORS, p)],
        "drain_s": harness.seconds(drained_at - w1),
        # Sessions opened on the database per second in the window (every process's).
        "db_sessions_per_s": round((sessions1 - sessions0) / args.seconds, 1),
        "latency_ms": {
            "n": n,
            "to_worker_start": {"p50": _ms(start_q, 0), "p99": _ms(start_q, 1),
                                "max": harness._r(start_max)},
            "to_end_recorded": {"p50": _ms(rec_q, 0), "p99": _ms(rec_q, 1),
                                "max": harness._r(rec_max)},
            # celery: = to_worker_start (the worker writes started_at); task: the enqueue.
            "to_node_started_at": {"p50": _ms(handed_q, 0), "p99": _ms(handed_q, 1)},
            "on_worker": {"p50": _ms(run_q, 0), "p99": _ms(run_q, 1)},
        },
        "max_running_on_workers": busiest,
        "node_running": flight.summary(w0.timestamp(), w1.timestamp()),
        "node_cpu_pct": mem["m1"]["cpu_pct"], "node_rss_mb_max": mem["m1"]["rss_mb_max"],
        "workers_cpu_pct": round(sum(mem[w.name]["cpu_pct"] or 0 for w in pool), 1),
        "workers_rss_mb_max": {w.name: mem[w.name]["rss_mb_max"] for w in pool},
        "postgres_cpu_pct": usage["postgres_cpu_pct"],
        "machine_cpu_pct": usage["machine_cpu_pct"], "other_cpu_pct": usage["other_cpu_pct"],
        "session_states": usage["session_states"], "active_queries": usage["active_queries"],
        "idle_before": idle, "exit_codes": codes, "stop_stats": node.stop_stats(),
        "logs": str(ldir),
    }


def _sessions(db: BenchDB) -> int:
    """Sessions ever opened on the bench's database (PostgreSQL 14+): a new one per task
    shows in the difference over the window."""
    db.q("SELECT pg_stat_clear_snapshot()")
    return db.one("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")[0]


def _ms(values, i: int) -> float | None:
    return harness._r(values[i]) if values else None


def measure(db: BenchDB, args, **kw) -> dict:
    """run_one, again (up to --retries times) while others took more than --max-other % of a
    core during the window; the least disturbed run is kept."""
    runs = []
    for attempt in range(1 + args.retries):
        r = run_one(db, args=args, **kw)
        r["attempt"] = attempt + 1
        runs.append(r)
        if (r["other_cpu_pct"] or 0) <= args.max_other or attempt == args.retries:
            break
        log(f"others used {r['other_cpu_pct']:.0f} % of a core during the window; again")
    best = min(runs, key=lambda x: x["other_cpu_pct"] or 0)
    best["other_cpu_pct_of_attempts"] = [r["other_cpu_pct"] for r in runs]
    return best


HEADERS = ["run", "asked/s", "ended/s", "owed", "ok", "other end", "not ended", "dup", "miss",
           "→ worker start p50 / p99 ms", "→ end recorded p50 / p99 ms", "max running",
           "DB sessions/s", "node CPU %", "node RSS MB", "workers CPU %", "PG CPU %",
           "others' CPU %"]


def rows_for(results: list[dict]) -> list[list]:
    rows = []
    for r in results:
        lat = r["latency_ms"]
        rows.append([
            r["run"], r["asked_per_s"], r["ended_per_s"], r["owed"], r["succeeded"],
            r["other_end"], r["not_ended_at_stop"] + r["pending_at_stop"], r["duplicates"],
            r["missed"],
            f"{lat['to_worker_start']['p50']} / {lat['to_worker_start']['p99']}",
            f"{lat['to_end_recorded']['p50']} / {lat['to_end_recorded']['p99']}",
            f"{r['max_running_on_workers']} (node {r['node_running']['max']})",
            r["db_sessions_per_s"],
            r["node_cpu_pct"], r["node_rss_mb_max"], r["workers_cpu_pct"],
            r["postgres_cpu_pct"], r["other_cpu_pct"],
        ])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="celery:50,celery:200,task:50,task:200,inflight",
                    help="celery:N, task:N (N one-second schedules) and inflight, "
                         "comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--drain", type=float, default=10.0,
                    help="seconds the tasks in flight are given to end after the window")
    ap.add_argument("--concurrency", type=int, default=32,
                    help="the Celery worker's threads (throughput runs)")
    ap.add_argument("--db-workers", type=int, default=2, help="db_worker processes")
    ap.add_argument("--inflight-schedules", type=int, default=50)
    ap.add_argument("--inflight-job-seconds", type=float, default=2.0)
    ap.add_argument("--inflight-workers", type=int, default=8, help="the node's pool")
    ap.add_argument("--inflight-concurrency", type=int, default=160,
                    help="the Celery worker's threads (inflight run: more than it keeps busy)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--retries", type=int, default=1,
                    help="run again when other processes disturbed the window")
    ap.add_argument("--max-other", type=float, default=15.0,
                    help="%% of a core other processes may use during a window")
    ap.add_argument("--idle-wait", type=float, default=60.0,
                    help="seconds to wait for a quiet machine before each run")
    ap.add_argument("--db", default="opsc_bench_executors",
                    help="database name (created, dropped)")
    ap.add_argument("--keep-db", action="store_true")
    args = ap.parse_args(argv)
    plan = []
    for spec in args.runs.split(","):
        kind, _, n = spec.partition(":")
        if spec == "inflight":
            plan.append(dict(executor="celery", schedules=args.inflight_schedules,
                             workers=args.inflight_workers,
                             concurrency=args.inflight_concurrency,
                             job_seconds=args.inflight_job_seconds))
        elif kind in ("celery", "task") and n.isdigit() and int(n) > 0:
            plan.append(dict(executor=kind, schedules=int(n)))
        else:
            ap.error(f"--runs: {spec!r}: celery:N, task:N or inflight")
    harness.stop_on_sigterm()

    info = harness.machine()
    info["broker"] = BROKER
    db = ExecutorsDB(args.db, keep=args.keep_db)
    db.create()
    results = []
    began = time.monotonic()
    try:
        for kw in plan:
            r = measure(db, args, **kw)
            results.append(r)
            print(harness.table(HEADERS, rows_for([r])), file=sys.stderr, flush=True)
    finally:
        db.drop()
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = {"benchmark": "executors", "machine": info, "settings": vars(args),
           "elapsed_s": round(time.monotonic() - began), "runs": results}
    harness.write_json(args.json, out)
    print()
    print(harness.table(HEADERS, rows_for(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
