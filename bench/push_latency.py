"""Change → browser latency of the live console: from a commit in another process to each
websocket client's receipt of the pushed fragment.

    .venv/bin/python bench/push_latency.py [--db pg|sqlite|pg,sqlite] [--clients 1,50]
                                           [--changes 300] [--gap 0.1] [--json out.json]

For each database: a fresh one (PostgreSQL `opsc_push_bench`, created and dropped; SQLite a
file under var/), migrated, with a cluster, a job and a viewer whose session is made with
Django's test client. A daphne process serves `bench.push_asgi:application` (the console
plus a bench-only topic `benchjob:<pk>` that renders the job's title). For each client count,
N websocket clients (a minimal RFC 6455 reader on asyncio streams: the venv has no websocket
client library) follow `benchjob:<pk>`; this process then updates the job's title `--changes`
times, `--gap` s apart (with ±50 % jitter), each an autocommit UPDATE whose return is the
commit time, and every client notes when the fragment carrying that sequence number arrives.
Latency = receipt − commit, same machine clock. p50/p95/max over every (change, client).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
PG_NAME = "opsc_push_bench"


def log(text: str) -> None:
    print(f"[push {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def prepare(kind: str) -> str:
    """A fresh, migrated database; its URL."""
    if kind == "pg":
        psql(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")
        psql(f"CREATE DATABASE {PG_NAME}")
        url = f"{PG}/{PG_NAME}"
    else:
        path = ROOT / "var" / "push-bench.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
                   cwd=ROOT, env=env, check=True)
    return url


def setup_data() -> tuple[int, str]:
    """A job and a viewer's session cookie (this process is Django on the bench database)."""
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from scheduler.models import Cluster, Job

    cluster = Cluster.objects.create(name="bench")
    job = Job.objects.create(cluster=cluster, name="pushed", kind="shell", command="true")
    user = User.objects.create_user("bench-viewer", password=secrets.token_hex(8))
    user.groups.add(Group.objects.get(name="viewer"))
    client = Client()
    client.force_login(user)
    return job.pk, client.cookies["sessionid"].value


# ------------------------------------------------------------------ a minimal websocket reader


async def ws_connect(port: int, path: str, cookie: str):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
                  f"Cookie: sessionid={cookie}\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    return reader, writer


async def ws_frames(reader):
    """Yield (opcode, payload) of the server's (unmasked) frames."""
    while True:
        b1, b2 = await reader.readexactly(2)
        size = b2 & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        yield b1 & 0x0F, await reader.readexactly(size)


async def client(port: int, path: str, cookie: str, seen: dict, ready: asyncio.Event,
                 ready_count: list, total: int):
    reader, writer = await ws_connect(port, path, cookie)
    async for opcode, payload in ws_frames(reader):
        if opcode == 8:
            return
        if opcode != 1:
            continue
        now = time.time()
        text = payload.decode()
        if 'data-stamp="' not in text:
            continue
        stamp = text.split('data-stamp="', 1)[1].split('"', 1)[0]
        if stamp == "ready":
            ready_count[0] += 1
            if ready_count[0] >= total:
                ready.set()
            continue
        if stamp:
            seen.setdefault(id(reader), []).append((int(stamp), now))


def run_clients(port, path, cookie, n, seen, started: threading.Event, stop: threading.Event):
    async def main():
        ready = asyncio.Event()
        count = [0]
        tasks = [asyncio.create_task(client(port, path, cookie, seen, ready, count, n))
                 for _ in range(n)]
        await asyncio.wait_for(ready.wait(), 60)
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


def measure(port: int, job_pk: int, cookie: str, clients: int, changes: int, gap: float) -> dict:
    from scheduler.models import Job

    Job.objects.filter(pk=job_pk).update(title="ready")
    seen: dict[int, list[tuple[int, float]]] = {}  # per client: (sequence, receipt time)
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_clients, args=(
        port, f"/ws/live/?topics=benchjob:{job_pk}", cookie, clients, seen, started, stop))
    thread.start()
    if not started.wait(90):
        stop.set()
        raise SystemExit("the clients did not all get their snapshot")
    commits: dict[int, float] = {}
    for i in range(1, changes + 1):
        time.sleep(gap * random.uniform(0.5, 1.5))  # noqa: S311
        Job.objects.filter(pk=job_pk).update(title=str(i))
        commits[i] = time.time()
    time.sleep(3.0)
    stop.set()
    thread.join(30)
    # A change is in the browser when the first fragment showing it or a later one arrives
    # (a burst is coalesced: a value overtaken before the fan-out is never sent by itself).
    latencies = []
    missing = 0
    for received in seen.values():
        for i, at in commits.items():
            first = next((t for stamp, t in received if stamp >= i), None)
            if first is None:
                missing += 1
            else:
                latencies.append((first - at) * 1000)
    missing += (clients - len(seen)) * changes
    if not latencies:
        raise SystemExit("no change reached any client")
    delivered = sum(len(received) for received in seen.values())
    return {"clients": clients, "changes": changes, "gap_s": gap,
            "pushes": delivered, "changes_x_clients": changes * clients,
            "never_shown": missing,
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(pct(latencies, 95), 1), "max_ms": round(max(latencies), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="pg,sqlite")
    ap.add_argument("--clients", default="1,50")
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--gap", type=float, default=0.1)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = []
    kinds = args.db.split(",")
    if len(kinds) > 1:  # settings are read once per process: a process per database
        for kind in kinds:
            out = subprocess.run([sys.executable, __file__, "--db", kind, "--clients",
                                  args.clients, "--changes", str(args.changes), "--gap",
                                  str(args.gap), "--json", "/dev/stdout"],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
            results += json.loads(out.stdout)
    for kind in kinds if len(kinds) == 1 else []:
        url = prepare(kind)
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
        import django

        django.setup()
        from django.db import connections

        job_pk, cookie = setup_data()
        port = free_port()
        daphne = subprocess.Popen(
            [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
             "bench.push_asgi:application"], cwd=ROOT, env={**os.environ, "DEBUG": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            for n in (int(c) for c in args.clients.split(",")):
                log(f"{kind}: {n} client(s), {args.changes} changes {args.gap:g} s apart")
                result = {"db": kind, **measure(port, job_pk, cookie, n, args.changes, args.gap)}
                log(json.dumps(result))
                results.append(result)
        finally:
            daphne.terminate()
            daphne.wait(10)
            connections.close_all()
            if kind == "pg":
                psql(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.json != "/dev/stdout":
        print("| database | clients | changes | pushes received | never shown | p50 ms "
              "| p95 ms | max ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['db']} | {r['clients']} | {r['changes']} | {r['pushes']} / "
                  f"{r['changes_x_clients']} | {r['never_shown']} | {r['p50_ms']} | "
                  f"{r['p95_ms']} | {r['max_ms']} |")


if __name__ == "__main__":
    main()
