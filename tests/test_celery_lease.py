"""A Celery worker that loses the database stops its job before the cluster declares the task
lost and runs it again: the job never runs unsupervised beside its own recovery.

The worker reaches PostgreSQL through a TCP relay of the test's own, which is then frozen (no
byte passes, the connections stay open: a partition, the renewal hangs) or cut (connections
reset and refused: the renewal fails at once). Real node, real worker, local Redis.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler.models import Task
from tests.celery_support import REDIS_URL, Worker, require_broker
from tests.conftest import add_job, database_url, is_postgres, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]
LEASE = 4.0  # OPSCENTER_CELERY_LEASE_TIMEOUT of the node and the worker


class Relay:
    """127.0.0.1:<port> → PostgreSQL, which the test can freeze or cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.frozen.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set() and not self.closed.is_set():
                time.sleep(0.05)  # hold every byte: the peer waits, as on a partition
            if self.closed.is_set():
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self.frozen.set()

    def cut(self) -> None:
        self.frozen.set()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def relay():
    if not is_postgres():
        pytest.skip("the worker reaches PostgreSQL through a TCP relay")
    from django.conf import settings

    db = settings.DATABASES["default"]
    r = Relay((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    yield r
    r.close()


@dataclass
class Running:
    """A job that writes a beat every 50 ms forever, running on a worker behind the relay."""

    task: Task
    beats: Path
    worker: Worker
    node: object

    def count(self) -> int:
        return self.beats.read_text().count("\n") if self.beats.exists() else 0

    def output(self) -> str:
        return f"{self.worker.output()}\n{self.node.output()}"


@pytest.fixture
def forever(cluster, start_node, relay, tmp_path):
    """Start the job on a worker that reaches the database through the relay, with the given
    lease; wait until it runs."""
    require_broker("Redis", REDIS_URL)
    workers: list[Worker] = []

    def start(lease: float, recover_lost: bool) -> Running:
        beats = Path(tmp_path) / "beats"
        queue = f"opsc-lease-{uuid.uuid4().hex[:10]}"
        job = add_job(cluster, "cel-forever",
                      f"while true; do date +%s.%N >> {beats}; sleep 0.05; done",
                      kind="shell", executor="celery", celery_queue=queue,
                      recover_lost=recover_lost, timeout_seconds=600)
        env = {"OPSCENTER_CELERY_BROKER": REDIS_URL,
               "OPSCENTER_CELERY_LEASE_TIMEOUT": str(lease)}
        url = database_url().replace(f"127.0.0.1:{relay.target[1]}",
                                     f"127.0.0.1:{relay.port}")
        assert str(relay.port) in url
        worker = Worker(queue, REDIS_URL, {**env, "DATABASE_URL": url})
        workers.append(worker)
        node = start_node("--cluster", "test", "--node", "n1", *FAST, env=env)
        run = Running(job.run_now("test"), beats, worker, node)
        wait_for(lambda: run.count() > 5, timeout=60,
                 message=f"the job runs on the worker\n{run.output()}")
        return run

    yield start
    for worker in workers:
        worker.stop()


@pytest.mark.parametrize("loss", ["freeze", "cut"])
def test_a_worker_that_loses_the_database_stops_its_job_before_the_task_is_declared_lost(
        forever, relay, loss):
    run = forever(LEASE, recover_lost=False)
    getattr(relay, loss)()
    lost = wait_for(lambda: Task.objects.filter(pk=run.task.pk, state="lost").first(),
                    timeout=LEASE * 4, message=f"the task is declared lost\n{run.output()}")
    assert "did not renew its lease" in lost.error
    last_beat = float(run.beats.read_text().split()[-1])
    # The job had stopped when the node declared the task lost.
    assert last_beat < lost.finished_at.timestamp(), (last_beat, lost.finished_at)
    count = run.count()
    time.sleep(1.0)  # the job stays stopped: nothing left running that writes beats
    assert run.count() == count
    assert "no lease renewal" in run.worker.output()


def test_a_job_its_worker_stopped_for_a_database_blip_is_lost_and_recovered(forever, relay):
    """The database comes back before the lease runs out, but after the worker stopped its job:
    the worker writes the task `lost` (nobody asked for a cancel) and the cluster recovers it."""
    run = forever(6, recover_lost=True)
    relay.freeze()
    wait_for(lambda: "no lease renewal" in run.worker.output(), timeout=10,
             message=f"the worker stops its job\n{run.output()}")
    relay.frozen.clear()  # back before the 6 s lease runs out
    lost = wait_for(lambda: Task.objects.filter(pk=run.task.pk, state="lost").first(),
                    timeout=20, message=f"the task ends lost\n{run.output()}")
    assert "the Celery worker stopped its job" in lost.error, lost.error
    wait_for(lambda: Task.objects.filter(retry_of=run.task, trigger="recovery").exists(),
             timeout=10, message="a recovery")
