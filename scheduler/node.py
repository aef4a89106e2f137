"""The scheduler node: one `runscheduler` process, a loop of named steps.

Each step does one thing and says whether it found work; the loop sleeps only when none did,
until the earliest moment something becomes due, a heartbeat is owed, a worker finishes, or
(on PostgreSQL) a NOTIFY says that a schedule, job or lease changed. Jobs run in a bounded
thread pool; the main thread alone talks to the database, in short batched transactions.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, connections, transaction

from scheduler import eventlog, executors, ledger, membership, text, validators
from scheduler.clock import db_now
from scheduler.executors import registry
from scheduler.limits import BOUNDS, door_names
from scheduler.models import Cluster, Member, Task
from scheduler.ops import logcontext
from scheduler.ops import member_metrics as metrics
from scheduler.reaper import TOKEN_VAR, Reaper

log = logging.getLogger("opscenter.node")

# The database went away (or the connection did): weather. Other database errors are the
# failure of one step, handled like any other exception, with the connection kept.
DB_ERRORS = (OperationalError, InterfaceError)
STOP_REASON = "node stopped"
# The others declare a member whose database session is gone dead once its heartbeat is this
# many heartbeat intervals old (membership.declare_dead's lock_grace).
LOCK_GRACE = 1.5
INT32 = 2**31 - 1
# Pool threads made at the start (see Node._prestart_pool); a larger pool makes the rest when
# a burst needs them.
PRESTART_MAX = 256
# The share of the ownership window (see Node._owned_since) kept back as a safety margin: the
# start fence refuses that much before the others could possibly declare the member dead.
OWNERSHIP_MARGIN = 0.1


@dataclass
class NodeSettings:
    heartbeat_interval: float = 1.0
    dead_after: float = 5.0
    takeover_stagger: float = 1.0
    stop_grace: float = 30.0
    log_limit_bytes: int = 1_000_000
    log_flush_interval: float = 1.0
    batch_limit: int = 1000
    # Fires due this soon are claimed now and their jobs entered at the due instant (the pool
    # thread waits for it): the claim's own time (some 15-30 ms for a burst of 100, and now and
    # then over 50 ms) is spent before the instant rather than after it.
    start_ahead: float = 0.1
    task_retention_days: int = 30
    event_retention_days: int = 30
    # PostgreSQL ends a session idle inside a transaction for this long (None: half of
    # dead_after; 0: never). A member frozen mid-claim then releases its row locks and its
    # advisory lock, so it can neither stall the others nor hide that it is gone.
    idle_in_transaction_timeout: float | None = None

    def __post_init__(self) -> None:
        # One rule for both doors (environment and runscheduler options): each number within
        # its bounds, and a heartbeat more often than a member is declared dead.
        for key, bound in BOUNDS.items():
            if hasattr(self, key):
                try:
                    bound.check(getattr(self, key))
                except ValueError as exc:
                    raise ValueError(f"{door_names(key)}: {getattr(self, key)!r} {exc}.") from None
        if self.dead_after <= self.heartbeat_interval:
            raise ValueError(
                f"{door_names('dead_after')} must be longer than "
                f"{door_names('heartbeat_interval')}: {self.dead_after:g} s is not longer "
                f"than {self.heartbeat_interval:g} s.")

    @classmethod
    def from_django(cls, **overrides) -> NodeSettings:
        conf = settings.OPSCENTER
        values = dict(
            heartbeat_interval=conf["HEARTBEAT_INTERVAL"],
            dead_after=conf["DEAD_AFTER"],
            takeover_stagger=conf["TAKEOVER_STAGGER"],
            stop_grace=conf["STOP_GRACE"],
            log_limit_bytes=conf["LOG_LIMIT_BYTES"],
            task_retention_days=conf["TASK_RETENTION_DAYS"],
            event_retention_days=conf["EVENT_RETENTION_DAYS"],
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Running:
    """A task this member runs: its executor handles and what is needed to finish it."""

    started: ledger.Started
    log: executors.LogBuffer
    cancel: executors.Cancel
    entry: executors.Entry
    outcome: executors.Outcome | None = None
    interrupted: bool = False
    unsaved_log: str = ""  # drained but not yet committed
    start_saved: bool = False  # entry.at written to the task's started_at
    task_run: executors.TaskRun | None = None  # what its executor was given
    # Work that runs elsewhere (a Celery worker, a django.tasks worker): once its pool thread
    # has handed it away (outcome SENT), what the executor's follow sees. From then on it holds
    # no pool slot; the loop follows it (step_follow_away).
    sent: executors.Sent | None = None
    follower: executors.Away | None = None  # its executor's, once sent

    @property
    def away(self) -> bool:
        """Handed away by its pool thread and not ended yet: followed by step_follow_away."""
        return self.outcome is not None and self.outcome.state == executors.SENT


@dataclass
class Clock:
    """The member's estimate of the database clock: monotonic time plus a measured offset."""

    offset: float = 0.0  # db epoch seconds minus time.monotonic()
    error: float = 0.0  # how far off the offset may be: half the round trip that measured it

    def measure(self) -> float:
        before = time.monotonic()
        now = db_now()
        after = time.monotonic()
        self.offset = now.timestamp() - (before + after) / 2
        self.error = (after - before) / 2
        return (time.time() - now.timestamp()) * 1000  # this machine's skew, for the record

    def now(self) -> float:
        return time.monotonic() + self.offset

    def at(self, mono: float) -> datetime:
        """A reading of the monotonic clock as a database time."""
        return datetime.fromtimestamp(mono + self.offset, UTC)

    def seconds_until(self, at: datetime) -> float:
        return at.timestamp() - self.now()


@dataclass
class Stats:
    started: int = 0
    finished: int = 0
    misfired: int = 0
    discarded: int = 0
    claims: int = 0
    db_errors: int = 0
    step_errors: int = 0
    unrecordable: int = 0        # results the database refused, recorded as failed instead
    dropped: int = 0             # results not even that could be written: left unrecorded
    log_chunks_dropped: int = 0  # log chunks the database refused
    claim_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Node:
    def __init__(self, opts: membership.MemberOptions, conf: NodeSettings | None = None):
        self.opts = opts
        self.conf = conf or NodeSettings.from_django()
        self.member: Member | None = None
        self.epoch: int | None = None  # passive cluster: the lease epoch while active
        self.clock = Clock()
        self.wake = threading.Event()
        self.stopping = False
        self.forced = False
        self.running: dict[int, Running] = {}
        # Until when (monotonic) this member surely still owns the tasks it holds: no other
        # member can have declared it dead before then. Pool threads read it right before
        # they enter a job (the start fence); the main thread pushes it on at each heartbeat.
        self.owned_until = 0.0
        self._last_beat = time.monotonic()
        # Jobs entered here whose task was declared lost with this member, not written yet:
        # (cluster id, member id, member name, task id, job id, entry time).
        self._ran_unowned: list[tuple] = []
        self.pool = ThreadPoolExecutor(max_workers=opts.workers,
                                       thread_name_prefix=f"job-{opts.name}")
        self.cache = ledger.TimingCache()
        self.stats = Stats()
        self.names = [opts.name, *opts.labels]
        self._next_beat = 0.0
        self._next_dead_check = 0.0
        self._next_log_flush = 0.0
        self._next_prune = 0.0
        self._next_recover = 0.0
        self._next_follow: dict[executors.Away, float] = {}  # per executor that follows
        self._connected_since = time.monotonic()
        self._db_down_since: float | None = None
        self._backoff = 0.0
        # When the next claim is due (monotonic): at the next fire this member may take, a
        # heartbeat at most (what another door queued on SQLite, which has no NOTIFY), or
        # at once after a full batch or a NOTIFY. Claiming on every wake-up would take
        # SQLite's write lock several times a second for nothing.
        self._claim_at = 0.0
        # When the next order claim is due (monotonic): once a heartbeat, or at once after an
        # order moved, a step of an order ended, or a NOTIFY (an order added or resumed).
        self._orders_at = 0.0
        # Whether the next order claim may skip the probe (ledger.orders.probe): right after
        # a claim that asked for more, or a step of an order ended here (its order most likely
        # waits at its next node). Otherwise a cheap unlocked read comes first, and the fenced
        # claim (on SQLite the write lock) only when an order is due.
        self._orders_known = False
        self._listener: threading.Thread | None = None
        self.reaper: Reaper | None = None
        # Test hook: freeze this process (SIGSTOP) once, right after the first claim that
        # started something committed and before its jobs reach the pool, as a member that
        # hangs at a due instant would (tests/test_fence.py). Off unless exactly "1".
        self._stop_after_claim = os.environ.get("OPSCENTER_TEST_SIGSTOP_AFTER_CLAIM") == "1"
        # The same for order steps, at the n-th order claim that started steps while no other
        # task ran here (in the middle of a run of orders, the member holding only steps whose
        # jobs it has not entered: tests/test_order_faults.py). Off unless a positive number.
        n = os.environ.get("OPSCENTER_TEST_SIGSTOP_AFTER_ORDER_CLAIM", "")
        self._stop_after_order_claims = int(n) if n.isdigit() else 0

    # ------------------------------------------------------------ lifecycle

    @property
    def is_passive(self) -> bool:
        return self.opts.mode == Cluster.Mode.PASSIVE

    @property
    def _sticky(self) -> bool:
        """An active cluster: orders of chains that are not distributed, their steps' retries
        and recoveries included, stay with the member that holds them."""
        return self.opts.mode == Cluster.Mode.ACTIVE

    def may_run(self) -> bool:
        """Active members claim work; a passive cluster's standbys only watch."""
        if self.stopping or self.member is None:
            return False
        return self.epoch is not None if self.is_passive else True

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            if self.stopping:
                self.forced = True
                log.warning("second signal: forcing exit")
            else:
                log.warning("signal %s: stopping (no new work; running tasks may finish within "
                            "%.0f s)", signal.Signals(signum).name, self.conf.stop_grace)
            self.stopping = True
            self.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def start_reaper(self) -> None:
        """Mark everything this node starts with a token of its own and start the reaper that
        kills those processes when the node ends, however it ends (scheduler/reaper.py).

        Call it before start(): it changes this process's environment, which must happen before
        other threads (the listener, the pool) run."""
        token = secrets.token_hex(16)
        os.environ[TOKEN_VAR] = token
        self.reaper = Reaper(token)
        try:
            self.reaper.start()
        except OSError as exc:  # tried again at every heartbeat
            log.error("could not start the reaper (%s): until it runs, the processes of this "
                      "node's jobs would outlive a crash of the node", exc)
            return
        log.info("reaper started (pid %s): the processes of this node's jobs die with it",
                 self.reaper.pid)

    def _check_reaper(self) -> None:
        if self.reaper is None or self.reaper.alive():
            return
        if self.reaper.proc is not None:
            log.error("the reaper (pid %s) ended with status %s; starting a new one",
                      self.reaper.pid, self.reaper.exit_code())
            self.reaper.proc = None
        try:
            self.reaper.start()
        except OSError as exc:
            log.error("could not start the reaper (%s); trying again at the next heartbeat", exc)
            return
        log.warning("reaper started again (pid %s)", self.reaper.pid)

    def start(self) -> Member:
        self._configure_session()
        self.clock.measure()
        before = time.monotonic()
        self.member = membership.register(self.opts, self.conf.dead_after,
                                          self.conf.heartbeat_interval)
        self._owned_since(before)
        self._prestart_pool()
        logcontext.set_member(self.opts.cluster, self.member.name)
        metrics.member_started(self.opts.cluster, self.member.name, self.opts.mode)
        log.info("member %s joined cluster %s as %s (pid %d, %d workers)", self.member.name,
                 self.opts.cluster, self.opts.mode, os.getpid(), self.opts.workers)
        # Joining judged the others already; only a reconnect calls for a wait (see
        # step_detect_dead).
        self._connected_since = time.monotonic() - self.conf.dead_after
        if connection.vendor == "postgresql":
            self._listener = threading.Thread(target=self._listen, name="listen", daemon=True)
            self._listener.start()
        return self.member

    def run(self) -> None:
        """Run until asked to stop, then stop cleanly."""
        if self.member is None:
            self.start()
        try:
            while not self.stopping:
                self.tick()
        finally:
            self.shutdown()

    def tick(self) -> bool:
        """One pass of the loop; sleeps when no step found work. Returns whether any did."""
        busy = False
        try:
            if self._db_down_since is not None:
                self._reconnect()
            busy |= self.step_heartbeat()
            busy |= self.step_detect_dead()
            busy |= self.step_follow_away()
            busy |= self.step_record_finished()
            busy |= self.step_flush_logs()
            if self.may_run():
                busy |= self.step_recover_lost()
                busy |= self.step_claim()
                busy |= self.step_claim_orders()
            self.step_prune()
            self._backoff = 0.0
        except DB_ERRORS as exc:
            self._database_weather(exc)
            return False
        except membership.MemberRefused:
            raise
        except Exception:
            # One failing step must not end the daemon (nor crash-loop it): log, pause, go on.
            self.stats.step_errors += 1
            log.exception("a step of the loop failed; carrying on in a second")
            self.wake.wait(1.0)
            self.wake.clear()
            return False
        if not busy and not self.stopping:
            self._sleep()
        return busy

    # ------------------------------------------------------------ steps

    def step_heartbeat(self) -> bool:
        mono = time.monotonic()
        if mono < self._next_beat:
            return False
        self._next_beat = mono + self.conf.heartbeat_interval
        skew = self.clock.measure()
        before = time.monotonic()
        alive = membership.heartbeat(self.member.pk, len(self.running),
                                     int(max(min(skew, INT32), -INT32)))
        if not alive:
            if self.stopping:
                # Stopping anyway: the others recover our tasks; do not join again.
                log.error("declared dead by the cluster while stopping")
                self._drop_unowned()
                return True
            self._declared_dead()
            return True
        self._owned_since(before)
        self._check_cancel_requests()
        self._check_reaper()
        if self.is_passive:
            self._keep_or_seek_lease()
        return False

    def step_detect_dead(self) -> bool:
        mono = time.monotonic()
        if mono < self._next_dead_check:
            return False
        self._next_dead_check = mono + self.conf.heartbeat_interval / 4
        # Right after our own reconnect every heartbeat looks old: wait before judging others.
        if mono - self._connected_since < self.conf.dead_after:
            return False
        dead = membership.declare_dead(
            self.member.cluster_id, self.member, self.member.name, self.conf.dead_after,
            check_locks=True, lock_grace=LOCK_GRACE * self.conf.heartbeat_interval,
        )
        if dead:
            self._next_recover = 0.0
            if self.is_passive and self.epoch is None:
                self._keep_or_seek_lease()
        return bool(dead)

    def step_recover_lost(self) -> bool:
        mono = time.monotonic()
        if mono < self._next_recover:
            return False
        # Once a heartbeat: a death this member declares brings the scan forward at once
        # (step_detect_dead); the regular pass covers deaths declared by a member that then
        # stopped before it recovered anything.
        self._next_recover = mono + self.conf.heartbeat_interval
        recovered = ledger.recover_lost_tasks(
            self.member.cluster_id, self.member.pk, self.member.name, self.epoch,
            self.conf.dead_after,
        )
        if recovered:
            log.warning("marked %d task(s) of dead members lost", recovered)
        return bool(recovered)

    def step_claim(self) -> bool:
        if time.monotonic() < self._claim_at:
            return False
        capacity = self._free_slots()
        if capacity <= 0:
            return False
        began = time.perf_counter()
        result = ledger.claim(
            cluster_id=self.member.cluster_id, member_id=self.member.pk,
            member_names=self.names, capacity=capacity, epoch=self.epoch,
            dead_after=self.conf.dead_after, cache=self.cache, batch_limit=self.conf.batch_limit,
            ahead=self.conf.start_ahead, sticky=self._sticky,
        )
        self.stats.claims += 1
        self.stats.claim_seconds += time.perf_counter() - began
        if result.fenced:
            log.warning("claim refused by the fence: this member is not allowed to fire now")
            if self.is_passive:
                self._lease_lost("the lease was no longer ours when claiming")
            self._next_beat = 0.0  # find out at once what happened to us
            self._claim_at = time.monotonic() + self.conf.heartbeat_interval
            return False
        self.stats.misfired += result.misfired
        metrics.claimed(result.fired, len(result.started), result.misfired)
        if result.started and self._stop_after_claim:
            self._stop_after_claim = False
            os.kill(os.getpid(), signal.SIGSTOP)
        for started in result.started:
            self._start(started)
        if result.more:
            self._claim_at = 0.0
        else:
            self._plan_next_claim(ahead=0.0 if result.deferred else self.conf.start_ahead)
        return bool(result.started) or result.more or bool(result.fired)

    def step_claim_orders(self) -> bool:
        """Take the next steps of waiting orders, up to the pool's free capacity (one batch:
        ledger.orders.claim_steps). In an active cluster orders of chains that are not
        distributed stay with the member that holds them."""
        if time.monotonic() < self._orders_at:
            return False
        capacity = self._free_slots()
        if capacity <= 0:
            return False
        if not self._orders_known:
            mono = time.monotonic()
            due, upcoming = ledger.orders.probe(self.member.cluster_id)
            if not due:
                self._plan_next_order_claim(mono, upcoming)
                return False
        self._orders_known = False
        result = ledger.orders.claim_steps(
            cluster_id=self.member.cluster_id, member_id=self.member.pk,
            member_names=self.names, capacity=capacity, epoch=self.epoch,
            dead_after=self.conf.dead_after, sticky=self._sticky,
            batch_limit=self.conf.batch_limit,
        )
        if result.fenced:
            log.warning("order claim refused by the fence: this member may not move orders now")
            if self.is_passive:
                self._lease_lost("the lease was no longer ours when claiming order steps")
            self._next_beat = 0.0
            self._orders_at = time.monotonic() + self.conf.heartbeat_interval
            return False
        metrics.order_steps_claimed(len(result.started))
        if result.started and self._stop_after_order_claims and not self.running:
            self._stop_after_order_claims -= 1
            if not self._stop_after_order_claims:
                os.kill(os.getpid(), signal.SIGSTOP)
        for started in result.started:
            self._start(started)
        if result.more:
            self._orders_at = 0.0
            self._orders_known = True
        else:
            mono = time.monotonic()
            self._plan_next_order_claim(mono, ledger.orders.next_start(
                self.member.cluster_id, self.clock.at(mono)))
        return bool(result.started) or result.more

    def _plan_next_order_claim(self, mono: float, upcoming: datetime | None) -> None:
        """Once a heartbeat at most, and at the next due time of a repeating order."""
        wait = self.conf.heartbeat_interval
        if upcoming is not None:
            wait = min(max(self.clock.seconds_until(upcoming), 0.0), wait)
        self._orders_at = mono + wait

    def _plan_next_claim(self, ahead: float) -> None:
        """After a claim that took all it could: the next one `ahead` before the next fire is
        due (at its due instant when this claim left a fire due that soon for then)."""
        due = ledger.next_wake(self.member.cluster_id, self.names,
                               self.member.pk if self._sticky else None)
        wait = self.conf.heartbeat_interval
        if due is not None:
            wait = min(max(self.clock.seconds_until(due) - ahead, 0.0), wait)
        self._claim_at = time.monotonic() + wait

    def _free_slots(self) -> int:
        """Free threads of the pool: every task here holds one, except those whose work runs
        elsewhere, handed away (a Celery worker, a django.tasks worker does it; the loop
        follows them). Tasks in state running still count towards their job's max_parallel,
        wherever they run."""
        return self.opts.workers - sum(1 for run in self.running.values() if run.sent is None)

    def step_follow_away(self) -> bool:
        """Follow every task of this member whose pool thread handed the work away (outcome
        SENT): grouped by executor, one look for each executor's tasks every `Away.poll` s
        (celery_executor.follow, djtasks.follow). A cancel (operator, overlap `replace`, the
        node's stop) ends such a task at once, without a look (`Away.cancelled`)."""
        mono = time.monotonic()
        groups: dict[executors.Away, dict[int, Running]] = {}
        ended = False
        for task_id, run in self.running.items():
            if not run.away:
                continue
            if run.sent is None:  # just handed away: its pool thread is free again
                found = registry.find(run.task_run.executor, run.task_run.kind)
                if found is None or found.away is None:  # a runner that breaks its contract
                    run.outcome = executors.Outcome(
                        "failed", None, "executor error: the work was handed away, but its "
                                        "executor cannot follow it")
                    ended = True
                    continue
                run.sent = executors.Sent(run.task_run, run.log, run.cancel, mono,
                                          run.outcome.handle)
                run.follower = found.away
                self._next_follow[found.away] = min(self._next_follow.get(found.away, 0.0),
                                                    mono + found.away.poll)
            if run.cancel.requested:
                run.outcome = run.follower.cancelled(run.sent)
                ended = True
            else:
                groups.setdefault(run.follower, {})[task_id] = run
        for away, runs in groups.items():
            if mono < self._next_follow.get(away, 0.0):
                continue
            self._next_follow[away] = mono + away.poll
            try:
                looks = away.follow(self.member.pk,
                                    {task_id: run.sent for task_id, run in runs.items()})
            except DB_ERRORS:
                raise  # weather: the loop reconnects
            except Exception as exc:
                # A bug in one executor's follow must not stop the recording and claims of
                # everything else: its tasks are looked at again at the next poll.
                log.error("following %d task(s) handed away failed: %s", len(runs),
                          _reason(exc))
                continue
            for followed in looks:
                run = runs[followed.task_id]
                if followed.started_at is not None and run.entry.at is None:
                    run.entry.at = followed.started_at.timestamp() - self.clock.offset
                if followed.outcome is not None:
                    run.outcome = followed.outcome
                    ended = True
        return ended

    def _look_at_away_starts(self, done: list[Running]) -> None:
        """Tasks handed away that the node ends itself (a cancel, its stop, a lease run out)
        may have been started since the last look: one more look, so that such a task counts
        as entered (a lost one is then recovered only if its job says so)."""
        groups: dict[executors.Away, dict[int, Running]] = {}
        for run in done:
            if run.sent is not None and run.entry.at is None and run.follower is not None \
                    and run.outcome.state != executors.RECORDED:
                groups.setdefault(run.follower, {})[run.started.task_id] = run
        for away, runs in groups.items():
            try:
                looks = away.follow(self.member.pk,
                                    {task_id: run.sent for task_id, run in runs.items()})
            except DB_ERRORS:
                raise
            except Exception as exc:  # as in step_follow_away: never stop the recording
                log.error("looking at %d task(s) handed away failed: %s", len(runs),
                          _reason(exc))
                continue
            for followed in looks:
                if followed.started_at is not None:
                    runs[followed.task_id].entry.at = \
                        followed.started_at.timestamp() - self.clock.offset

    def step_record_finished(self) -> bool:
        """Record every task whose executor has finished. Driven from the running table, not
        from a queue, so a failed write is simply tried again at the next pass."""
        done = [run for run in self.running.values() if run.outcome is not None and not run.away]
        # --- executor celery: a run its worker recorded itself leaves without a write
        for run in [r for r in done if r.outcome.state == executors.RECORDED]:
            self.running.pop(run.started.task_id, None)
            self.stats.finished += 1
            done.remove(run)
            if run.started.order_id is not None:
                self._orders_at = 0.0
        # --- end executor celery
        if not done:
            if self._ran_unowned:
                self._record_ran_unowned([])
            return False
        self._look_at_away_starts(done)
        finished = [self._finished(run) for run in done]
        for run in done:
            run.unsaved_log += text.storable_text(run.log.drain())
        logs = [(run.started.task_id, run.unsaved_log) for run in done]
        by_id = {run.started.task_id: run for run in done}
        try:
            discarded = ledger.record_finished(self.member.cluster_id, self.member.pk, finished,
                                               logs)
        except DB_ERRORS:
            raise
        except Exception as exc:
            # Not weather: something in the batch that the database refuses, and it would
            # refuse it again at every pass (the node would start nothing ever after).
            log.error("recording %d finished task(s) failed (%s); recording them one by one",
                      len(finished), _reason(exc))
            discarded = self._record_one_by_one(finished, logs)
            by_id = {}  # its discarded runs are noted as they go
        if discarded:
            self.stats.discarded += len(discarded)
            log.warning("results of task(s) %s discarded: they are no longer this member's "
                        "(declared lost while it was unreachable, or deleted)", discarded)
        # A task handed away whose end by the node was discarded was ended by its worker (or
        # the recovery): the worker's writes are guarded, nothing ran here unowned.
        unowned = [by_id[t] for t in discarded if t in by_id and by_id[t].sent is None]
        for run in done:
            self.running.pop(run.started.task_id, None)
            if run.started.order_id is not None:
                self._orders_at = 0.0  # its order waits at its next node: take it now
                self._orders_known = True
        # After the runs are gone: a failure here must not make a recorded task look
        # discarded at the next pass; what is not written yet is tried again then.
        self._record_ran_unowned(unowned)
        self.stats.finished += len(finished)
        metrics.outcomes((f.job.name, f.state) for f in finished)
        metrics.lateness((f.started_at, f.scheduled_for) for f, run in zip(finished, done,
                                                                           strict=True)
                         if not run.start_saved and f.started_at is not None
                         and run.started.trigger == Task.Trigger.SCHEDULE)
        if len(self.running) + len(finished) >= self.opts.workers:
            self._claim_at = 0.0  # the pool was full: what is due can start now
        return True

    def _record_one_by_one(self, finished: list[ledger.Finished],
                           logs: list[tuple[int, str]]) -> list[int]:
        """Each result in a transaction of its own, so a bad one cannot take its neighbours
        down. One the database still refuses ends `failed` with the reason (no log, no data);
        if even that fails it is dropped, so the node never retries the same failing write.
        Each leaves the running table once written: a lost connection half-way through
        (weather) leaves only the rest to record at the next pass."""
        discarded: list[int] = []
        cluster_id, member_id = self.member.cluster_id, self.member.pk
        for f, entry in zip(finished, logs, strict=True):
            try:
                gone = ledger.record_finished(cluster_id, member_id, [f], [entry])
                if gone and f.task_id in self.running:
                    # Noted now: the run leaves the table below, and a lost connection later
                    # in this loop must not make us forget that it ran unowned.
                    self._note_ran_unowned([self.running[f.task_id]])
                discarded += gone
            except DB_ERRORS:
                raise
            except Exception as exc:
                reason = _reason(exc)
                try:
                    ours = ledger.record_unrecordable(member_id, f, reason)
                except DB_ERRORS:
                    raise
                except Exception as last:
                    ours = False
                    reason += f"; recording it as failed: {_reason(last)}"
                if ours:
                    self.stats.unrecordable += 1
                    log.error("the result of task %s could not be recorded (%s); recorded as "
                              "failed without its log and data", f.task_id, reason)
                else:
                    self.stats.dropped += 1
                    log.error("the result of task %s could not be recorded (%s); dropped",
                              f.task_id, reason)
            self.running.pop(f.task_id, None)
        return discarded

    def _finished(self, run: Running) -> ledger.Finished:
        """The outcome as the ledger takes it; what a job left behind that the ledger cannot
        hold (a data map that is not JSON data, an exit code out of range) fails the task, and
        text no database can hold (NUL, lone surrogates) is made storable (scheduler.text)."""
        s, o = run.started, run.outcome
        state, error, data, code = o.state, o.error, o.data, o.exit_code
        if run.interrupted and state == Task.State.CANCELLED and run.cancel.reason == STOP_REASON:
            state, error = Task.State.LOST, "lost: interrupted by the stop of its member"
        if code is not None and not -INT32 <= code <= INT32:
            error = f"{error} (exit code {code} out of range)".strip()
            code = INT32 if code > 0 else -INT32
        if data is not None and s.job.stateful:
            try:
                data = text.storable_data(data)
                validators.validate_data_map(data)
                validators.json_text(data)
            except Exception as exc:  # whatever the job left (RecursionError: too deep)
                state = Task.State.FAILED
                error = f"the data map the run left is not JSON data: {exc}"
                data = None
        error = text.storable_text(error)
        entered = run.entry.at
        return ledger.Finished(
            task_id=s.task_id, job=s.job, schedule_id=s.schedule_id,
            scheduled_for=s.scheduled_for, attempt=s.attempt, parameters=s.parameters,
            state=state, exit_code=code, error=error, data=data,
            started_at=self.clock.at(entered) if entered is not None else None,
            order_id=s.order_id, order_step=s.order_step, order_state=s.order_state,
        )

    def step_flush_logs(self) -> bool:
        mono = time.monotonic()
        if mono < self._next_log_flush or not self.running:
            return False
        self._next_log_flush = mono + self.conf.log_flush_interval
        for run in self.running.values():
            run.unsaved_log += text.storable_text(run.log.drain())
        logs = [(task_id, run.unsaved_log) for task_id, run in self.running.items()
                if run.unsaved_log]
        # Jobs entered since the last flush that are still running: their real start (those
        # that ended already get it with their end).
        entered = [run for run in self.running.values()
                   if run.entry.at is not None and not run.start_saved]
        starts = [(run.started.task_id, self.clock.at(run.entry.at)) for run in entered]
        if not logs and not starts:
            return False
        try:
            with transaction.atomic():
                ledger.write_logs(logs)
                ledger.write_starts(self.member.pk, starts)
        except DB_ERRORS:
            raise  # kept in unsaved_log (and start_saved False) for the next pass
        except Exception as exc:
            log.error("storing the log chunks of %d task(s) failed (%s); storing them one by "
                      "one", len(logs), _reason(exc))
            self._write_logs_one_by_one(logs)
            with transaction.atomic():
                ledger.write_starts(self.member.pk, starts)
        for task_id, _ in logs:
            self.running[task_id].unsaved_log = ""
        for run in entered:
            run.start_saved = True
        metrics.lateness((at, run.started.scheduled_for)
                         for run, (_, at) in zip(entered, starts, strict=True)
                         if run.started.trigger == Task.Trigger.SCHEDULE)
        return False

    def _write_logs_one_by_one(self, logs: list[tuple[int, str]]) -> None:
        """Each chunk in a transaction of its own; one the database refuses is dropped (a line
        in the task's log says so where that can be written), never tried again."""
        for task_id, chunk in logs:
            try:
                with transaction.atomic():
                    ledger.write_logs([(task_id, chunk)])
            except DB_ERRORS:
                raise
            except Exception as exc:
                reason = _reason(exc)
            else:
                self.running[task_id].unsaved_log = ""  # stored: not again after weather
                continue
            self.running[task_id].unsaved_log = ""
            self.stats.log_chunks_dropped += 1
            log.error("a log chunk of task %s (%d characters) could not be stored (%s); "
                      "dropped", task_id, len(chunk), reason)
            try:
                with transaction.atomic():
                    ledger.write_logs([(task_id, f"\n[opscenter] {len(chunk)} characters of "
                                                 f"output could not be stored: {reason}\n")])
            except DB_ERRORS:
                raise
            except Exception as exc:
                log.debug("task %s: the note of the dropped chunk: %s", task_id, exc)

    def step_prune(self) -> bool:
        mono = time.monotonic()
        if mono < self._next_prune:
            return False
        from scheduler.retention import prune

        pruned = prune(self.member.cluster_id, self.conf.task_retention_days,
                       self.conf.event_retention_days)
        # While there is a backlog, a batch every few seconds; then once an hour.
        self._next_prune = mono + (5 if pruned else 3600)
        return False

    # ------------------------------------------------------------ running jobs

    def _start(self, started: ledger.Started) -> None:
        job = started.job
        # A fire claimed a little ahead is entered at its due instant, on the member's
        # estimate of the database clock (a freeze during the wait is the start fence's).
        early = min(self.clock.seconds_until(started.scheduled_for), self.conf.start_ahead)
        # Plus the estimate's own error: a job is never entered before its due instant on the
        # database's clock.
        entry = executors.Entry(
            self._unowned,
            not_before=time.monotonic() + early + self.clock.error if early > 0 else None)
        task_run = executors.TaskRun(
            task_id=started.task_id, job_name=job.name, kind=job.kind, command=job.command,
            working_directory=job.working_directory,
            parameters={**job.parameters, **started.parameters}, data=job.data_map,
            timeout=job.timeout_seconds, scheduled_for=started.scheduled_for,
            attempt=started.attempt, cluster=self.opts.cluster, member=self.opts.name,
            isolation=job.isolation, stateful=job.stateful, executor=job.executor,
            queue=job.celery_queue, cluster_id=self.member.cluster_id, member_id=self.member.pk,
        )
        run = Running(started=started, log=executors.LogBuffer(self.conf.log_limit_bytes),
                      cancel=executors.Cancel(), entry=entry, task_run=task_run)
        self.running[started.task_id] = run
        self.stats.started += 1
        self.pool.submit(self._execute, run, task_run)

    def _prestart_pool(self) -> None:
        """Make the pool's threads now. ThreadPoolExecutor makes one when a task is handed to
        it and none is idle: a first burst of 100 fires would wait for 100 thread starts."""
        n = min(self.opts.workers, PRESTART_MAX)
        barrier = threading.Barrier(n + 1)
        for _ in range(n):
            # Each task holds its thread until all are there, so every submit makes a thread.
            self.pool.submit(barrier.wait)
        try:
            barrier.wait(10.0)
        except threading.BrokenBarrierError:
            log.warning("the worker pool's threads were slow to start")

    def _execute(self, run: Running, task_run: executors.TaskRun) -> None:
        try:
            with logcontext.task_context(task_run.job_name, task_run.task_id):
                # The executor registered for the job's executor and kind (executors/registry.py).
                run.outcome = executors.execute(task_run, run.log, run.cancel, entry=run.entry)
        except BaseException as exc:  # execute never raises; this is the last line of defence
            run.outcome = executors.Outcome("failed", None, f"executor error: {exc!r}")
        finally:
            # A python job that used the ORM opened a connection of this pool thread's own
            # (Django's connections are per thread, persistent here); pool threads live as
            # long as the member, so a pool of 100 would keep 100 sessions open for ever.
            connections.close_all()
        self.wake.set()

    # ------------------------------------------------------------ ownership (the start fence)

    def _ownership_window(self) -> float:
        """How long after a heartbeat statement is sent no other member can declare this one
        dead: dead_after without a newer heartbeat; on PostgreSQL also the idle-in-transaction
        timeout, since a member frozen inside a transaction loses its session then, and the
        others declare a member whose session (advisory lock) is gone dead at once."""
        window = self.conf.dead_after
        if connection.vendor == "postgresql":
            idle = self.conf.idle_in_transaction_timeout
            if idle is None:
                idle = max(self.conf.dead_after / 2, 0.5)
            if idle > 0:
                window = min(window, idle)
            # Not capped at LOCK_GRACE heartbeats, after which the others judge a member whose
            # session is gone: that would refuse jobs whenever a busy loop's heartbeat is a
            # little late. A session we drop ourselves ends the window at once
            # (_database_weather); one ended behind our back (terminated by the server, a
            # network cut) can still let a job in, and that run is written down (ran_unowned).
        return window

    def _owned_since(self, before: float) -> None:
        """A heartbeat (or the join) sent after the monotonic reading `before` succeeded: the
        others cannot declare this member dead before `before` + the window, on any clock that
        runs at the rate of ours. Neither a claim's fence nor a lease renewal extends this: the
        tasks of a member are lost only when the member is declared dead."""
        self._last_beat = before
        self.owned_until = before + self._ownership_window() * (1 - OWNERSHIP_MARGIN)

    def _unowned(self) -> str:
        """The start fence, asked in a pool thread right before a job is entered: "" while
        this member surely still owns its tasks, else why the job is not started. The
        monotonic clock runs on while the process is frozen (SIGSTOP), so a member woken
        after the others declared it dead sees its deadline passed."""
        now = time.monotonic()
        if now < self.owned_until:
            return ""
        return (f"not started: member {self.opts.name} was unresponsive for "
                f"{now - self._last_beat:.1f} s (no heartbeat) and may no longer own the task")

    def _record_ran_unowned(self, runs: list[Running]) -> None:
        """Tasks that are no longer ours but whose job was entered here: the fire may have
        run twice (here and in the recovery). Say so on the ledger, for the audit; kept until
        written (a lost connection is weather: the next pass tries again)."""
        self._note_ran_unowned(runs)
        self._write_ran_unowned()

    def _note_ran_unowned(self, runs: list[Running]) -> None:
        entered = [run for run in runs if run.entry.at is not None]
        if entered:
            log.error("task(s) %s ran on this member although they were declared lost with "
                      "it; written down for the audit", [r.started.task_id for r in entered])
        self._ran_unowned += [
            (self.member.cluster_id, self.member.pk, self.member.name, run.started.task_id,
             run.started.job.id, self.clock.at(run.entry.at)) for run in entered]

    def _write_ran_unowned(self) -> None:
        while self._ran_unowned:
            cluster_id, member_id, name = self._ran_unowned[0][:3]
            mine = [e for e in self._ran_unowned if e[1] == member_id]
            try:
                ledger.record_ran_unowned(cluster_id, member_id, name, [e[3:] for e in mine])
            except DB_ERRORS:
                raise  # weather: kept, tried again at the next pass
            except Exception as exc:
                # Refused for good (its member row deleted, say): retrying it at every pass
                # would stop this node from claiming anything ever again.
                log.error("could not write down task(s) %s that ran unowned (%s); dropped",
                          [e[3] for e in mine], _reason(exc))
            self._ran_unowned = [e for e in self._ran_unowned if e[1] != member_id]

    def _drop_unowned(self) -> None:
        """This member was declared dead: its running tasks are the others' to recover. Stop
        them, write down those whose job had been entered, and forget them."""
        self._cancel_all("its member was declared dead", interrupted=False)
        deadline = time.monotonic() + executors.KILL_GRACE + 1.0
        while any(r.outcome is None for r in self.running.values()) \
                and time.monotonic() < deadline:
            self.wake.wait(0.1)
            self.wake.clear()
        # Work handed away is stopped by its own worker, whose writes are guarded: not ours
        # to write down as run unowned.
        runs = [run for run in self.running.values() if run.sent is None]
        self.running.clear()
        self._record_ran_unowned(runs)

    def _check_cancel_requests(self) -> None:
        if not self.running:
            return
        for task_id, reason in ledger.cancel_requests(self.member.pk):
            run = self.running.get(task_id)
            if run is not None and not run.cancel.requested:
                log.info("cancelling task %s: %s", task_id, reason)
                run.cancel.request(reason)

    def _cancel_all(self, reason: str, interrupted: bool) -> None:
        for run in self.running.values():
            run.interrupted = interrupted
            run.cancel.request(reason)

    # ------------------------------------------------------------ passive cluster

    def _keep_or_seek_lease(self) -> None:
        if self.stopping:
            if self.epoch is not None:
                membership.renew_lease(self.member, self.epoch, self.conf.dead_after)
            return
        if self.epoch is not None:
            if not membership.renew_lease(self.member, self.epoch, self.conf.dead_after):
                self._lease_lost("the lease was taken over or expired")
                return
            if membership.hand_over_if_asked(self.member, self.epoch, self.conf.dead_after):
                log.warning("handed the lease over on request; now standby")
                self.epoch = None
                metrics.lease("lost")
            return
        epoch = membership.seek_lease(self.member, self.conf.dead_after, self.conf.dead_after,
                                      self.conf.takeover_stagger)
        if epoch is not None:
            self.epoch = epoch
            metrics.lease("taken")
            self._claim_at = 0.0
            self._orders_at = 0.0
            log.warning("member %s is now active (epoch %d)", self.member.name, epoch)

    def _lease_lost(self, why: str) -> None:
        if self.epoch is None:
            return
        log.error("lease lost: %s; standing by", why)
        self.epoch = None
        metrics.lease("lost")
        if membership.set_state(self.member, Member.State.STANDBY):
            eventlog.lease_lost(self.member, why)

    # ------------------------------------------------------------ failures

    def _declared_dead(self) -> None:
        """Others declared us dead while we were away: our running tasks are theirs to recover.
        Stop them, drop their results (writing down the jobs that were entered all the same),
        and join again."""
        log.error("this member was declared dead by the cluster; stopping its tasks and "
                  "joining again")
        if self.epoch is not None:
            metrics.lease("lost")
        self.epoch = None
        self._drop_unowned()
        before = time.monotonic()
        self.member = membership.register(self.opts, self.conf.dead_after,
                                          self.conf.heartbeat_interval)
        self._owned_since(before)
        self._connected_since = time.monotonic()

    def _database_weather(self, exc: Exception) -> None:
        """A lost database is weather: log, back off, reconnect, carry on."""
        self.stats.db_errors += 1
        # Our session (and with it our advisory lock) is about to go: from now on the others
        # may declare this member dead well before its last heartbeat's window ends.
        self.owned_until = 0.0
        if self._db_down_since is None:
            self._db_down_since = time.monotonic()
            log.error("database error (%s); retrying", str(exc).strip().splitlines()[0][:200])
        try:
            connection.close()
        except Exception as close_exc:  # closing a broken connection may fail too
            log.debug("closing the broken connection: %s", close_exc)
        self._backoff = min(max(self._backoff * 2, 0.1), 1.0)
        self.wake.wait(self._backoff)
        self.wake.clear()

    def _reconnect(self) -> None:
        connection.ensure_connection()
        self._configure_session()
        membership.acquire_member_lock(self.member.pk)
        down = time.monotonic() - (self._db_down_since or time.monotonic())
        self._db_down_since = None
        self._connected_since = time.monotonic()
        self._next_beat = 0.0
        log.warning("database back after %.1f s", down)
        # Before acting on anything held before the outage, re-check lease and membership.
        if self.epoch is not None and not membership.renew_lease(self.member, self.epoch,
                                                                 self.conf.dead_after):
            self._lease_lost("the lease expired during the database outage")

    def _configure_session(self) -> None:
        """Name the session after the member (pg_stat_activity shows who is who) and bound how
        long it may sit idle inside a transaction."""
        if connection.vendor != "postgresql":
            return
        idle = self.conf.idle_in_transaction_timeout
        if idle is None:
            idle = max(self.conf.dead_after / 2, 0.5)
        with connection.cursor() as cursor:
            # Custom plans: a generic plan of the claim (LIMIT $n, next_fire_at <= $t) cannot
            # use the ordered index scan that stops after n rows.
            cursor.execute("SELECT set_config('application_name', %s, false), "
                           "set_config('idle_in_transaction_session_timeout', %s, false), "
                           "set_config('plan_cache_mode', 'force_custom_plan', false)",
                           [f"opscenter {self.opts.cluster}/{self.opts.name}"[:63],
                            str(int(idle * 1000))])

    # ------------------------------------------------------------ sleeping and waking

    def _sleep(self) -> None:
        timeout = max(self._next_beat - time.monotonic(), 0.0)
        timeout = min(timeout, max(self._next_dead_check - time.monotonic(), 0.0))
        if self.running:
            timeout = min(timeout, max(self._next_log_flush - time.monotonic(), 0.0))
        followed = {run.follower for run in self.running.values() if run.sent is not None}
        for away in followed:
            timeout = min(timeout, max(self._next_follow.get(away, 0.0) - time.monotonic(), 0.0))
        if self.may_run() and self._free_slots() > 0:
            timeout = min(timeout, max(self._claim_at - time.monotonic(), 0.0),
                          max(self._orders_at - time.monotonic(), 0.0))
        if timeout > 0:
            self.wake.wait(timeout)
        self.wake.clear()

    def _listen(self) -> None:
        """PostgreSQL LISTEN on its own connection; a NOTIFY for our cluster wakes the loop."""
        from scheduler.db import RECONNECTED, Listener
        from scheduler.wakeup import CHANNEL

        name = f"opscenter {self.opts.cluster}/{self.opts.name} listen"
        listener = Listener([CHANNEL], name=name)
        try:
            while not self.stopping:
                for note in listener.wait(1.0):  # reconnects by itself, never raises
                    if note == RECONNECTED or (
                            self.member and note[1] == str(self.member.cluster_id)):
                        self._claim_at = 0.0
                        self._orders_at = 0.0
                        self.wake.set()
        finally:
            listener.close()

    # ------------------------------------------------------------ stopping

    def _wait_for_running(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.running and time.monotonic() < deadline and not self.forced:
            try:
                self.step_follow_away()
                self.step_record_finished()
                self.step_flush_logs()
                self.step_heartbeat()
            except DB_ERRORS as exc:
                self._database_weather(exc)
                continue
            except Exception:
                log.exception("a step failed while waiting for running tasks")
                self.wake.wait(1.0)
            if self.running:
                self.wake.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))
                self.wake.clear()

    def shutdown(self) -> None:
        """Stop claiming, let running tasks finish within the grace period, stop the rest,
        record everything, and mark the member stopped."""
        if self.member is None:
            return
        try:
            if membership.set_state(self.member, Member.State.STOPPING):
                eventlog.member_stopping(self.member)
        except DB_ERRORS as exc:
            self._database_weather(exc)
        if self.running:
            log.info("waiting up to %.0f s for %d running task(s)", self.conf.stop_grace,
                     len(self.running))
            self._wait_for_running(self.conf.stop_grace)
        if self.running:
            log.warning("stopping %d task(s) still running after the grace period",
                        len(self.running))
            self._cancel_all(STOP_REASON, interrupted=True)
            if not self.forced:
                self._wait_for_running(executors.KILL_GRACE + 2.0)
        for _ in range(20):
            try:
                self.step_follow_away()
                self.step_record_finished()
                self.step_flush_logs()
                reason = "normal stop" if not self.running and not self.forced else "forced stop"
                # Tasks still running now (a job that ignored its cancel) end lost there.
                membership.mark_stopped(self.member, reason)
                break
            except DB_ERRORS as exc:
                self._database_weather(exc)
            except Exception:
                log.exception("recording the stop failed")
                break
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.reaper is not None:
            # Whatever a job left behind (a child of a python job) goes now, as it would at exit.
            self.reaper.stop()
        s = self.stats
        log.info("member %s stopped (%d started, %d finished, %d misfired; %d claims taking "
                 "%.1f s)", self.member.name, s.started, s.finished, s.misfired, s.claims,
                 s.claim_seconds)


def _reason(exc: BaseException) -> str:
    """A short, plain-ASCII account of an exception: certainly writable anywhere."""
    first = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return reason[:300].encode("ascii", "backslashreplace").decode("ascii")


def default_node_name() -> str:
    import socket

    return socket.gethostname().split(".")[0] or "node"

