"""Order steps per second through a three-step chain, on PostgreSQL, with real members.

    .venv/bin/python bench/orders.py [--orders 3000] [--runs 1:distributed,3:distributed,3:sticky]
                                     [--workers 256] [--json out.json] [--db NAME]

For each run: a fresh ledger, three no-op python jobs (`bench.jobs:noop`, max_parallel high
enough never to hold a step back), a chain one -> two -> three -> done (error states to an
end node `error`), M `runscheduler --distributed-orders` members joined and idle, then N
orders added at once (one INSERT, then the NOTIFY the doors send). `distributed`: the chain
is distributed (any member takes any step); `sticky`: it is not, and each order stays on the
member that took its first step. Measured from the first step's start to the last order
finished (the order's `updated_at` in the transaction that recorded its last step):

  steps/s     attempt-1 steps that ran / that time (3 per order)
  orders/s    orders finished / that time
  duplicates  extra attempt-1 tasks of one (order, order_state) (target: 0)
  unfinished  orders not finished when the run ended (target: 0)
  latency     per step after the first: its start (the job's entry) - the previous step's
              finish (the recording of its end): p50 / p99 / max
  spread      steps per member; `switches`: steps taken by another member than the order's
              previous step (sticky: must be 0)

Members' CPU, PostgreSQL's CPU and the members' sessions are sampled as in fires.py.
`--profile DIR` runs member m1 under cProfile (costly: take figures from runs without it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import BenchDB, MemberProcess, Sampler, log

STATES = ("one", "two", "three")


def load_chain(db: BenchDB, distributed: bool) -> tuple[int, int]:
    """A cluster, three no-op jobs and the chain one -> two -> three -> done: (cluster, chain)."""
    db.reset()
    cluster_id = db.one(
        "INSERT INTO scheduler_cluster (name, description, mode, lease_epoch, created_at) "
        "VALUES (%s, '', '', 0, now()) RETURNING id", [harness.CLUSTER])[0]
    jobs = [r[0] for r in db.q(
        "INSERT INTO scheduler_job (cluster_id, name, title, kind, command, "
        "working_directory, parameters, stateful, data_map, timeout_seconds, max_retries, "
        "retry_backoff_seconds, max_parallel, overlap_policy, recover_lost, affinity, "
        "executor, isolation, paused, created_at, updated_at) "
        "SELECT %s, s, '', 'python', 'bench.jobs:noop', '', '{}', false, '{}', NULL, 0, 10.0, "
        "100000, 'queue', true, '', 'node', 'thread', false, now(), now() "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i RETURNING id",
        [cluster_id, list(STATES)])]
    chain_id = db.one(
        "INSERT INTO scheduler_jobchain (cluster_id, name, title, distributed, stopped, "
        "max_orders, created_at) VALUES (%s, 'bench', '', %s, false, NULL, now()) RETURNING id",
        [cluster_id, distributed])[0]
    nodes = [(s, j, STATES[i + 1] if i + 1 < len(STATES) else "done", "error", i)
             for i, (s, j) in enumerate(zip(STATES, jobs, strict=True))]
    nodes += [("done", None, "", "", 90), ("error", None, "", "", 91)]
    for state, job, nxt, err, pos in nodes:
        db.q("INSERT INTO scheduler_chainnode (chain_id, state, job_id, next_state, "
             "error_state, action, position) VALUES (%s, %s, %s, %s, %s, 'active', %s)",
             [chain_id, state, job, nxt, err, pos])
    return cluster_id, chain_id


def add_orders(db: BenchDB, cluster_id: int, chain_id: int, n: int) -> datetime:
    """N orders waiting at `one`, in one statement, and the NOTIFY that wakes the members."""
    added = db.now()
    db.q("INSERT INTO scheduler_order (chain_id, order_id, title, parameters, priority, "
         "initial_state, end_state, state, status, member_id, version, step, "
         "suspend_requested, error_path, repeat_kind, cron, timezone, runs, created_at, "
         "updated_at) "
         "SELECT %s, 'o' || i, '', '{}', 0, 'one', '', 'one', 'waiting', NULL, 1, 0, false, "
         "false, '', '', '', 0, now(), now() FROM generate_series(1, %s) i", [chain_id, n])
    db.q("ANALYZE scheduler_order")
    db.q("SELECT pg_notify('opscenter', %s)", [str(cluster_id)])
    return added


VERDICT = """
SELECT count(*) FILTER (WHERE t.attempt = 1 AND t.started_at IS NOT NULL),
       count(*) FILTER (WHERE t.attempt > 1),
       count(*) FILTER (WHERE t.state <> 'succeeded'),
       min(t.started_at)
FROM scheduler_task t WHERE t.cluster_id = %(c)s AND t.order_id IS NOT NULL
"""
DUPLICATES = """
SELECT count(*), coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM scheduler_task
    WHERE cluster_id = %(c)s AND order_id IS NOT NULL AND attempt = 1
    GROUP BY order_id, order_state HAVING count(*) > 1) d
"""
ORDERS = """
SELECT count(*) FILTER (WHERE status = 'finished'), count(*) FILTER (WHERE status <> 'finished'),
       max(updated_at) FILTER (WHERE status = 'finished')
FROM scheduler_order WHERE chain_id = %(chain)s
"""
# Each step after the first: from the previous step's recorded end to this one's entry; and
# whether another member than the previous step's took it.
LATENCY = """
WITH s AS (
    SELECT order_id, order_step, member_id, started_at, finished_at,
           lag(finished_at) OVER w AS prev_end, lag(member_id) OVER w AS prev_member
    FROM scheduler_task WHERE cluster_id = %(c)s AND order_id IS NOT NULL
      AND state = 'succeeded'
    WINDOW w AS (PARTITION BY order_id ORDER BY order_step))
SELECT count(*) FILTER (WHERE prev_end IS NOT NULL),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - prev_end))
           FILTER (WHERE prev_end IS NOT NULL) * 1000,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - prev_end))
           FILTER (WHERE prev_end IS NOT NULL) * 1000,
       max(extract(epoch FROM started_at - prev_end)) * 1000,
       count(*) FILTER (WHERE prev_member IS NOT NULL AND prev_member <> member_id)
FROM s
"""
# How long each step's job ran and how long its end waited to be recorded (finished_at is the
# recording transaction's time): where the time of an order goes.
STEP_TIMES = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - claimed_at))
           * 1000,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           * 1000,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           * 1000
FROM scheduler_task WHERE cluster_id = %(c)s AND order_id IS NOT NULL AND state = 'succeeded'
"""
PER_MEMBER = """
SELECT m.name, count(*) FROM scheduler_task t JOIN scheduler_member m ON m.id = t.member_id
WHERE t.cluster_id = %(c)s AND t.order_id IS NOT NULL AND t.started_at IS NOT NULL
GROUP BY m.name ORDER BY m.name
"""


def run_one(db: BenchDB, *, members: int, distributed: bool, orders: int, workers: int,
            timeout: float, profile: Path | None = None) -> dict:
    idle = harness.wait_idle()
    cluster_id, chain_id = load_chain(db, distributed)
    kind = "distributed" if distributed else "sticky"
    ldir = harness.logdir(f"orders-{members}x{kind}")
    args = ["--distributed-orders", "--workers", str(workers)]
    procs = []
    for i in range(members):
        name = f"m{i + 1}"
        if profile is not None and i == 0:
            procs.append(_profiled(db, name, args, ldir, profile, f"{members}x{kind}"))
        else:
            procs.append(MemberProcess(db, name, args, ldir))
    p = {"c": cluster_id, "chain": chain_id}
    try:
        names = {m.name for m in procs}
        db.wait_for(lambda: names <= {n for n, m in db.members().items()
                                      if m["state"] == "active"}, 60, "members to join")
        off = harness.offset(db)
        sampler = Sampler(procs, db.url, off, db_name=db.name)
        sampler.start()
        added = add_orders(db, cluster_id, chain_id, orders)
        log(f"{members} member(s), {kind} chain: {orders} orders added at {added:%H:%M:%S}")
        db.wait_for(lambda: db.one(ORDERS, p)[1] == 0, timeout, "every order finished")
        sampler.stop()
    except RuntimeError as exc:
        sampler.stop()
        log(str(exc))
    finally:
        codes = {m.name: m.stop() for m in procs}
    ran, retries, not_ok, first = db.one(VERDICT, p)
    dup_keys, dup_extra = db.one(DUPLICATES, p)
    finished, unfinished, last = db.one(ORDERS, p)
    n_lat, p50, p99, mx, switches = db.one(LATENCY, p)
    claim_to_entry, run_p50, run_p99 = db.one(STEP_TIMES, p)
    elapsed = (last - first).total_seconds() if first and last else None
    usage = sampler.summary(first.timestamp(), last.timestamp()) if elapsed else {}
    spread = dict(db.q(PER_MEMBER, p))
    return {
        "members": members, "chain": kind, "orders": orders, "workers": workers,
        "first_step_after_add_s": harness.seconds(first - added) if first else None,
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "steps": ran, "steps_per_s": round(ran / elapsed, 1) if elapsed else None,
        "orders_finished": finished,
        "orders_per_s": round(finished / elapsed, 1) if elapsed else None,
        "duplicates": int(dup_extra), "duplicate_keys": dup_keys,
        "unfinished": unfinished, "later_attempts": retries, "steps_not_succeeded": not_ok,
        "step_latency_ms": {"n": n_lat, "p50": harness._r(p50), "p99": harness._r(p99),
                            "max": harness._r(mx)},
        "claim_to_entry_p50_ms": harness._r(claim_to_entry),
        "job_to_recorded_ms": {"p50": harness._r(run_p50), "p99": harness._r(run_p99)},
        "member_switches": switches,
        "steps_per_member": {m.name: spread.get(m.name, 0) for m in procs},
        "cpu_pct_per_member": {m: v["cpu_pct"] for m, v in usage.get("members", {}).items()},
        "rss_mb_per_member": {m: v["rss_mb_max"] for m, v in usage.get("members", {}).items()},
        "postgres_cpu_pct": usage.get("postgres_cpu_pct"),
        "machine_cpu_pct": usage.get("machine_cpu_pct"),
        "other_cpu_pct": usage.get("other_cpu_pct"),
        "session_states": usage.get("session_states"),
        "active_queries": usage.get("active_queries"),
        "idle_before": idle, "exit_codes": codes,
        "stop_stats": {m.name: m.stop_stats() for m in procs},
        "logs": str(ldir),
    }


def _profiled(db: BenchDB, name: str, args: list[str], ldir: Path, outdir: Path,
              tag: str) -> MemberProcess:
    """A member under cProfile (the profile is written when it stops, on SIGTERM)."""
    import psutil

    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}-{tag}.prof"
    log(f"member {name} under cProfile -> {out}")
    member = MemberProcess.__new__(MemberProcess)
    member.name = name
    member.log_path = ldir / f"{name}.log"
    member._log = open(member.log_path, "ab")  # noqa: SIM115
    member.proc = subprocess.Popen(
        [sys.executable, "-m", "cProfile", "-o", str(out), str(harness.ROOT / "manage.py"),
         "runscheduler", "--cluster", harness.CLUSTER, "--node", name, *args],
        cwd=harness.ROOT, env=db.env(), stdout=member._log, stderr=subprocess.STDOUT,
        start_new_session=True)
    member.ps = psutil.Process(member.proc.pid)
    return member


def measure(db: BenchDB, args, **kw) -> dict:
    """run_one, again (up to --retries times) while others took more than --max-other % of a
    core during the run; the least disturbed run is kept."""
    runs = []
    for attempt in range(1 + args.retries):
        r = run_one(db, orders=args.orders, workers=args.workers, timeout=args.timeout,
                    profile=args.profile, **kw)
        r["attempt"] = attempt + 1
        runs.append(r)
        if (r["other_cpu_pct"] or 0) <= args.max_other:
            break
        log(f"others used {r['other_cpu_pct']:.0f} % of a core during the run; again")
    best = min(runs, key=lambda x: x["other_cpu_pct"] or 0)
    best["other_cpu_pct_of_attempts"] = [r["other_cpu_pct"] for r in runs]
    return best


HEADERS = ["members", "chain", "orders", "s", "steps/s", "orders/s", "dup", "unfinished",
           "latency p50 / p99 / max ms", "steps per member", "switches", "CPU % per member",
           "PG CPU %", "machine CPU %", "others' CPU %"]


def rows_for(results: list[dict]) -> list[list]:
    rows = []
    for r in results:
        lat = r["step_latency_ms"]
        rows.append([
            r["members"], r["chain"], r["orders"], r["elapsed_s"], r["steps_per_s"],
            r["orders_per_s"], r["duplicates"], r["unfinished"],
            f"{lat['p50']} / {lat['p99']} / {lat['max']}",
            " / ".join(str(v) for v in r["steps_per_member"].values()), r["member_switches"],
            " / ".join(f"{v:.0f}" if v is not None else "-"
                       for v in r["cpu_pct_per_member"].values()),
            r["postgres_cpu_pct"], r["machine_cpu_pct"], r["other_cpu_pct"],
        ])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=3000)
    ap.add_argument("--runs", default="1:distributed,3:distributed,3:sticky",
                    help="members:chain pairs; chain is distributed or sticky")
    ap.add_argument("--workers", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds to wait for every order to finish")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--retries", type=int, default=2,
                    help="run again when other processes disturbed the run")
    ap.add_argument("--max-other", type=float, default=15.0,
                    help="%% of a core other processes may use during a run")
    ap.add_argument("--db", default="opsc_bench_orders",
                    help="database name (created, dropped)")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="run member m1 under cProfile; the .prof files go to DIR")
    args = ap.parse_args(argv)
    harness.stop_on_sigterm()
    runs = []
    for spec in args.runs.split(","):
        m, _, kind = spec.partition(":")
        if kind not in ("distributed", "sticky"):
            ap.error(f"--runs: {spec!r}: the chain is 'distributed' or 'sticky'")
        runs.append((int(m), kind == "distributed"))

    info = harness.machine()
    db = BenchDB(args.db, keep=args.keep_db)
    db.create()
    results = []
    began = time.monotonic()
    try:
        for members, distributed in runs:
            r = measure(db, args, members=members, distributed=distributed)
            results.append(r)
            print(harness.table(HEADERS, rows_for([r])), file=sys.stderr, flush=True)
    finally:
        db.drop()
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = {"benchmark": "orders", "machine": info,
           "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "elapsed_s": round(time.monotonic() - began), "runs": results}
    harness.write_json(args.json, out)
    print()
    print(harness.table(HEADERS, rows_for(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
