"""How fast the console opens and follows a big task log (docs/performance.md, "The console's
task log").

Writes a log of --mb megabytes (default 200) in chunks of --chunk-kb KiB (default 256) for one
task, as a member's log flushes write it (ledger.write_logs), then times over --repeat runs:
the task page (head 64 KiB + tail 256 KiB), a live read from a cursor 1 KiB before the end,
and the streamed download of the whole log (with the process's peak RSS growth while it
streams). Each figure is the median of the runs.

The database: DATABASE_URL, else a fresh SQLite file in a temporary directory. It is migrated
first; the bench's cluster (named bench-console-log) is deleted at the end.

    .venv/bin/python bench/console_log.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/opsc_bench_console .venv/bin/python \\
        bench/console_log.py    # the database must exist
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--chunk-kb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    tmp = None
    if not os.environ.get("DATABASE_URL"):
        tmp = tempfile.TemporaryDirectory()
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp.name}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    import psutil
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from scheduler import tasklogs
    from scheduler.ledger import write_logs
    from scheduler.models import Cluster, Job, Task

    call_command("migrate", verbosity=0)
    Cluster.objects.filter(name="bench-console-log").delete()
    cluster = Cluster.objects.create(name="bench-console-log")
    job = Job.objects.create(cluster=cluster, name="chatty", kind="shell", command="true")
    task = Task.objects.create(cluster=cluster, job=job, trigger="manual", state="running",
                               scheduled_for=django.utils.timezone.now())
    line = "2026-03-01 12:00:00 INFO step ünïcode output of a chatty job, line\n"
    chunk = line * (args.chunk_kb * 1024 // len(line.encode()))
    count = args.mb * 1024 * 1024 // len(chunk.encode())
    started = time.perf_counter()
    for start in range(0, count, 20):
        write_logs([(task.pk, chunk)] * min(20, count - start))
    write_seconds = time.perf_counter() - started
    size = tasklogs.size(task.pk)
    Task.objects.filter(pk=task.pk).update(state="succeeded")

    user = User.objects.filter(username="bench-console-log").first() or \
        User.objects.create_user("bench-console-log", password="x")
    user.groups.add(Group.objects.get(name="viewer"))
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    process = psutil.Process()
    page_ms, page_kib, read_ms, download_s, rss_growth = [], [], [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        response = client.get(f"/tasks/{task.pk}/")
        page_ms.append((time.perf_counter() - t) * 1000)
        page_kib.append(len(response.content) / 1024)
        assert response.status_code == 200
        t = time.perf_counter()
        body = client.get(f"/tasks/{task.pk}/log/", {"cursor": size - 1024}).json()
        read_ms.append((time.perf_counter() - t) * 1000)
        assert body["cursor"] == size
        rss = process.memory_info().rss
        peak = rss
        t = time.perf_counter()
        got = 0
        for piece in client.get(f"/tasks/{task.pk}/log/download/").streaming_content:
            got += len(piece)
            peak = max(peak, process.memory_info().rss) if got % (16 << 20) < len(piece) \
                else peak
        download_s.append(time.perf_counter() - t)
        rss_growth.append((peak - rss) / 1e6)
        assert got == size
    figures = {
        "database": connection.vendor, "log_mb": round(size / 1e6, 1),
        "chunks": count, "chunk_kib": args.chunk_kb, "write_s": round(write_seconds, 2),
        "page_ms": round(statistics.median(page_ms), 1),
        "page_kib": round(statistics.median(page_kib), 1),
        "read_from_cursor_ms": round(statistics.median(read_ms), 2),
        "download_s": round(statistics.median(download_s), 2),
        "download_mb_per_s": round(size / 1e6 / statistics.median(download_s), 1),
        "download_rss_growth_mb": round(max(rss_growth), 1),
    }
    print(json.dumps(figures, indent=2))
    Cluster.objects.filter(pk=cluster.pk).delete()
    user.delete()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
