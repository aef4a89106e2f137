"""The fire audit: every fire a schedule owed in a window, set against the ledger and the log.

For each schedule the owed fires are worked out from its own definition history (the
`schedule.created` / `schedule.changed` events; a schedule without any is audited against its
current definition from its creation, or from its last change if it was changed and the events
were pruned), and each owed fire gets exactly one verdict:

- ``ran``: its task (attempt 1) started; retries after a failure are still ``ran``.
- ``re-run``: a task of it was lost (member dead or stopped) and a recovery attempt exists.
- ``misfire``: not run on purpose, with the record that says so: a MisfireRecord of the
  misfire policy (``skip``, ``run_once`` coalescing, ``run_all_limit``), or a task in state
  ``skipped`` (the job's overlap policy ``skip``, recorded as "overlap skip").
- ``paused``: no task, and the job or the schedule was paused then (from the event log).
- ``not yet``: no task yet, but still inside the time it may legitimately start in
  (misfire grace + SLACK before the audit time), or claimed and queued for a free slot.
- ``behind``: no task, and the cluster has not reached it: "not reached yet: the schedule's
  next fire is still <time>". Not lost (a member takes it, late, or records it under the
  misfire policy when it gets there); typical of an overloaded cluster.
- ``down``: no task, not reached, and owed while the cluster is down: no member of it has
  run since before the fire, to the audit time. The detail says since when and which member
  ended last. Not lost either: the first member to come back takes it or records it.
- ``MISSED``: owed, no task and no record why. When no member of the cluster was running
  at that time (from the member rows), the detail says from when to when and which member
  ended last: the cluster was down (and came back, or moved past it), not a member that
  skipped a fire.
- ``DOUBLE``: started more than once without a recorded recovery (two rows of one attempt,
  or a later attempt that does not retry a failed or lost one), or a task whose job its
  member entered although the task was declared lost with it (`ran_unowned_at`, written by
  that member when it found out) while another attempt of the fire also started.

Tasks of a schedule at times its definition does not produce are listed as ``UNEXPECTED``
(not owed fires, so not counted among them, and not a failure of the audit). Only MISSED and
DOUBLE are failures (``auditfires`` exits 1); behind, down and not yet are fires still owed.

Behind and down, the rule: an untaken owed fire is *not reached* when it is owed under the
definition in force now (the last one on record), neither the job nor the schedule is paused
now, and it is at or after the schedule's current `next_fire_at` (the next fire the members
have not handed out yet; claiming a fire writes its task, or its misfire record, and moves
`next_fire_at` past it in one transaction). A fire before `next_fire_at` without a task or a
record is a real gap, whatever else is true. A not-reached fire is ``down`` when it lies in a
stretch without a running member that lasts to the audit time, else ``behind`` (or ``not yet``
within its start window). Members run from their start to their stop, or to their last
heartbeat when declared dead or when silent for longer than OPSCENTER_DEAD_AFTER (a cluster
killed whole has no one left to declare its members dead). The schedules are read before the
ledger, so a fire claimed during the audit is seen either as a task or as not reached.

Two ways to the same answer. ``python`` streams the ledger of every schedule through a merge
with its owed fires (every fire is looked at; used on SQLite, and for the full per-fire
list). ``sql`` (PostgreSQL) is set-based: per interval segment one GROUP BY compares the
arithmetic owed count with the ledger, window functions find the gaps where they differ,
only gaps and unusual rows are expanded, cron and once segments (at most one fire a minute)
are expanded in Python, and the lateness figures come from a count of each distinct
lateness. Both give identical verdicts, counts and lateness figures.

Everything is on the database clock: the audit time is the database's, lateness is the
ledger's `started_at - scheduled_for`, pauses and edits are the events' `created_at`.
Scheduling maths come only from scheduler.timing.

Definitions: definition i (from its event) is in force from when it was saved until the next
one; under it the owed fires are its fires at or after that time (saving restarts the
schedule from then). "When it was saved" is the event's time, except for an interval without
a start, whose anchor is the save's own clock reading (the event's `created_at` is the
transaction's start on PostgreSQL, a moment after the save on SQLite). A schedule whose first
event on record is a change (the creation was pruned) is not audited before that change.

Pauses: a job's and a schedule's pause/resume events make intervals. The grid does not change
across a resume (it restarts at the next fire of the same definition), so a pause is a label on
the untaken fires in [paused - grace - SLACK, resumed + RESUME_SLACK): a fire that was due
within its start window when the pause came was stopped by the pause, and the resume's restart
time is read just after its event's. A fire that has a task is judged by its task, paused or
not. Events are pruned oldest first, so the log on record is whole from wherever it begins: a
resume with no pause before it on record (pruned) means paused from before the log on record,
and an object paused now without its pause on record is paused since its last resume on
record, or from before the log. Untaken fires there are ``paused`` (the detail says the pause
is not in the event log), never MISSED on the strength of a missing record.

Lateness (p50/p99/max, overall and per member): `started_at - scheduled_for` of every first
attempt of an owed fire that started (linear interpolation, as PostgreSQL's percentile_cont;
exact, from every value). Per member: first attempts started there and later attempts
(retries, recoveries) started there.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone as djtz
from django.utils.dateparse import parse_date, parse_datetime

from scheduler import timing
from scheduler.clock import db_now
from scheduler.models import Event, Job, Member, MisfireRecord, Schedule, Task

RAN, RERUN, MISFIRE, PAUSED, NOT_YET, MISSED, DOUBLE = (
    "ran", "re-run", "misfire", "paused", "not yet", "MISSED", "DOUBLE")
BEHIND, DOWN = "behind", "down"
UNEXPECTED = "UNEXPECTED"
VERDICTS = (RAN, RERUN, MISFIRE, PAUSED, NOT_YET, BEHIND, DOWN, MISSED, DOUBLE)
ALL_VERDICTS = (*VERDICTS, UNEXPECTED)
FAILING = (MISSED, DOUBLE)

# Beyond a schedule's misfire grace, how late a claim may be before an untaken fire is missed
# (claim batches, a busy database); also how long before a pause an untaken fire counts as
# stopped by the pause rather than missed.
SLACK = timedelta(seconds=2)
# A resume restarts the schedule at a time read just after its event's time (same
# transaction): fires in between are not owed.
RESUME_SLACK = timedelta(seconds=0.5)

_US = timedelta(microseconds=1)
_PAGE = 4096
_RETRYABLE = ("failed", "timed_out", "lost")
_DEFINITION_KINDS = (Event.Kind.SCHEDULE_CREATED, Event.Kind.SCHEDULE_CHANGED)
_PAUSE_KINDS = (Event.Kind.JOB_PAUSED, Event.Kind.JOB_RESUMED, Event.Kind.SCHEDULE_PAUSED,
                Event.Kind.SCHEDULE_RESUMED)


class AuditInputError(ValueError):
    """Bad input to the audit (a time that cannot be read, an empty window)."""


# ------------------------------------------------------------------------------ small helpers


def _dt(value) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        dt = parse_datetime(str(value))
        if dt is None:
            return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def text_time(value: datetime | None) -> str:
    """A time for people: UTC to the millisecond."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _secs(delta: timedelta) -> float:
    return delta / timedelta(seconds=1)


def percentile(values: list[float], p: float) -> float | None:
    """PostgreSQL's percentile_cont on sorted values (the same arithmetic, to the bit)."""
    n = len(values)
    if not n:
        return None
    pos = p * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    first = values[lo]
    if hi == lo:
        return first
    return first + (values[hi] - first) * (pos - lo)


def percentile_of_counts(values: list[float], cumulative: list[int], p: float) -> float | None:
    """percentile() of values given once each, sorted, with the running total of how many times
    each occurs: the same arithmetic on the same two values, without writing every value out."""
    if not cumulative:
        return None
    pos = p * (cumulative[-1] - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    # The value at rank r (from 0) is the first whose running total exceeds r.
    first = values[bisect_right(cumulative, lo)]
    if hi == lo:
        return first
    return first + (values[bisect_right(cumulative, hi)] - first) * (pos - lo)


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$", re.IGNORECASE)


def parse_when(text: str, now: datetime, what: str = "time") -> datetime:
    """An ISO 8601 time (no offset: the default time zone), a date, `now`, or a time ago
    such as `90s`, `30m`, `1h`, `24h`, `7d`, `2w`."""
    value = (text or "").strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.match(value)
    if match:
        try:
            return now - timedelta(seconds=float(match[1]) * _UNITS[match[2].lower()])
        except OverflowError:
            raise AuditInputError(f"{what}: {value!r} reaches back before the year 1; give a "
                                  "shorter time ago or a date") from None
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            day = parse_date(value)
            parsed = datetime.combine(day, time()) if day else None
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise AuditInputError(
            f"{what}: cannot read {text!r}; give an ISO 8601 time such as "
            "2025-03-30T01:00:00Z (no offset: the server's time zone), a date, 'now', or a "
            "time ago such as 90m, 1h, 24h, 7d")
    try:
        if parsed.tzinfo is None:
            parsed = djtz.make_aware(parsed, djtz.get_default_timezone())
        parsed.astimezone(UTC)  # the window is compared and stored in UTC
    except OverflowError:
        raise AuditInputError(f"{what}: {value!r} is at the very edge of the calendar; give a "
                              "time between the years 1 and 9999") from None
    return parsed


# ------------------------------------------------------------------------------ the ledger rows


@dataclass(slots=True)
class TaskRow:
    id: int
    attempt: int
    trigger: str
    state: str
    member: str | None
    started_at: datetime | None
    finished_at: datetime | None
    retry_of: int | None
    created_at: datetime | None
    ran_unowned_at: datetime | None = None

    def to_json(self) -> dict:
        out = {"task": self.id, "attempt": self.attempt, "trigger": self.trigger,
               "state": self.state, "member": self.member, "started_at": iso(self.started_at),
               "finished_at": iso(self.finished_at), "retry_of": self.retry_of}
        if self.ran_unowned_at is not None:
            out["ran_unowned_at"] = iso(self.ran_unowned_at)
        return out


# Column order of every row query: schedule id, fire time, then the TaskRow fields.
_ROW_SQL_COLUMNS = ("t.schedule_id, t.scheduled_for, t.id, t.attempt, t.trigger, t.state, "
                    "m.name, t.started_at, t.finished_at, t.retry_of_id, t.created_at, "
                    "t.ran_unowned_at")
_ROW_ORM_COLUMNS = ("schedule_id", "scheduled_for", "id", "attempt", "trigger", "state",
                    "member__name", "started_at", "finished_at", "retry_of_id", "created_at",
                    "ran_unowned_at")


def _row(values) -> tuple[int, datetime, TaskRow]:
    (sid, due, tid, attempt, trigger, state, member, started, finished, retry_of,
     created, ran_unowned) = values
    return sid, _dt(due), TaskRow(tid, attempt, trigger, state, member, _dt(started),
                                  _dt(finished), retry_of, _dt(created), _dt(ran_unowned))


# ------------------------------------------------------------------------------ verdict records


@dataclass(slots=True)
class Fire:
    """One owed fire (or, with verdict UNEXPECTED, one ledger time that was not owed)."""

    schedule_id: int
    job: str
    due: datetime
    verdict: str
    detail: str = ""
    rows: list[TaskRow] = field(default_factory=list)
    record: dict | None = None
    plain: bool = False  # ran: exactly one attempt, started, not lost

    @property
    def first(self) -> TaskRow | None:
        return self.rows[0] if self.rows else None

    @property
    def member(self) -> str | None:
        return self.rows[0].member if self.rows else None

    @property
    def attempts(self) -> int:
        return len(self.rows)

    @property
    def state(self) -> str | None:
        return self.rows[-1].state if self.rows else None

    @property
    def lateness(self) -> float | None:
        first = self.first
        if first is None or first.attempt != 1 or first.started_at is None:
            return None
        return _secs(first.started_at - self.due)

    def to_json(self) -> dict:
        out = {"type": "fire", "schedule": self.schedule_id, "job": self.job,
               "due": iso(self.due), "verdict": self.verdict, "member": self.member,
               "attempts": self.attempts, "lateness": self.lateness, "state": self.state}
        if self.plain:
            out["task"] = self.rows[0].id
        else:
            out["detail"] = self.detail
            out["tasks"] = [r.to_json() for r in self.rows]
            if self.record is not None:
                out["record"] = self.record
        return out


@dataclass(slots=True)
class GapRun:
    """Owed fires in [lo, hi) of one definition, none with a task, all of one verdict."""

    schedule_id: int
    job: str
    timing: timing.Timing
    lo: datetime
    hi: datetime
    verdict: str
    detail: str
    record: dict | None
    count: int

    def fires(self) -> Iterator[Fire]:
        for due in _fires(self.timing, self.lo, self.hi):
            yield Fire(self.schedule_id, self.job, due, self.verdict, self.detail,
                       record=self.record)


def _fires(t: timing.Timing, lo: datetime, hi: datetime) -> Iterator[datetime]:
    """The fires of `t` in [lo, hi), ascending, a page at a time."""
    after, until = lo - _US, hi - _US
    while after < until:
        page = timing.fires_between(t, after, until, _PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1]


def _count(t: timing.Timing, lo: datetime, hi: datetime) -> int:
    return timing.count_fires(t, lo - _US, hi - _US) if hi > lo else 0


# ------------------------------------------------------------------------------ the plan


@dataclass(slots=True)
class Segment:
    """A stretch of the window under one definition: owed fires are its fires in [lo, hi)."""

    schedule_id: int
    index: int
    timing: timing.Timing | None  # None: nothing owed (before the schedule existed, or bad)
    lo: datetime
    hi: datetime
    grace: timedelta
    version: int | None
    describe: str
    next_at: datetime | None  # when the next definition took over (unclipped)
    audited: bool = True  # False: the definition is unknown (its event was pruned)
    # interval segments: arithmetic
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None

    @property
    def interval(self) -> bool:
        return self.timing is not None and self.timing.kind == "interval"

    def owes(self, due: datetime) -> bool:
        t = self.timing
        if t is None or not (self.lo <= due < self.hi):
            return False
        try:
            return timing.first_fire(t, due) == due
        except (timing.TimingError, OverflowError):
            return False


@dataclass(slots=True)
class Pause:
    what: str  # "job" | "schedule"
    start: datetime | None  # None: from before the event log on record (its event was pruned)
    end: datetime | None
    by: str
    resumed_by: str | None
    note: str = ""

    def covers(self, due: datetime, grace: timedelta) -> bool:
        """Was an untaken fire due at `due` stopped by this pause?"""
        return ((self.start is None or self.start - grace - SLACK <= due)
                and (self.end is None or due < self.end + RESUME_SLACK))

    def record(self) -> dict:
        return {"paused": self.what, "by": self.by, "from": iso(self.start),
                "to": iso(self.end), "resumed_by": self.resumed_by, "note": self.note or None}

    def detail(self) -> str:
        until = (f"to {text_time(self.end)} (resumed by {self.resumed_by or 'unknown'})"
                 if self.end else "and still paused")
        by = self.by or "unknown"
        since = ("from before the event log on record" if self.start is None
                 else f"from {text_time(self.start)}")
        text = f"{self.what} paused by {by} {since} {until}"
        return f"{text}; {self.note}" if self.note else text


@dataclass(slots=True)
class Misfire:
    id: int
    first: datetime
    last: datetime
    count: int
    policy: str
    reason: str
    member: str | None
    decided_at: datetime | None

    def record(self) -> dict:
        return {"misfire_record": self.id, "policy": self.policy, "reason": self.reason,
                "first": iso(self.first), "last": iso(self.last), "count": self.count,
                "member": self.member, "decided_at": iso(self.decided_at)}

    def detail(self) -> str:
        what = {"skip": "skipped", "run_once": "coalesced into one run",
                "run_all_limit": "beyond the run_all limit"}.get(self.reason, self.reason)
        return (f"{what} by misfire policy {self.policy} (record {self.id}: {self.count} "
                f"fire(s) {text_time(self.first)} to {text_time(self.last)}, decided by "
                f"{self.member or 'unknown'} at {text_time(self.decided_at)})")


@dataclass(slots=True)
class Down:
    """A stretch in which no member of the cluster was running (from the member rows: each
    runs from its start to its stop, or to its last heartbeat when it was declared dead)."""

    start: datetime
    end: datetime | None  # None: no member has joined since
    last: str  # the member that ended last before it, and how

    def detail(self) -> str:
        until = f"to {text_time(self.end)}" if self.end else "and none has joined since"
        return (f"no member of the cluster was running from {text_time(self.start)} {until} "
                f"({self.last})")


def _member_end(m: dict, silent_before: datetime) -> tuple[datetime | None, str]:
    """When a member stopped running (None: it still runs), and how, for Down.last. A live
    member silent for longer than the dead-after time has stopped running at its last
    heartbeat, declared dead or not (when the whole cluster is killed, no one declares it)."""
    if m["state"] in Member.LIVE_STATES:
        if m["heartbeat_at"] < silent_before:
            end = m["heartbeat_at"]
            return end, (f"the last, {m['name']}, is silent since its last heartbeat at "
                         f"{text_time(end)}, not declared dead yet")
        return None, ""
    if m["state"] == Member.State.DEAD:
        end = m["heartbeat_at"]
        return end, f"the last, {m['name']}, was declared dead; its last heartbeat at " \
                    f"{text_time(end)}"
    end = m["stopped_at"] or m["heartbeat_at"]
    return end, f"the last, {m['name']}, stopped at {text_time(end)}"


def _cluster_down(cluster_id: int, now: datetime) -> list[Down]:
    """The stretches with no member running, after the cluster's first member started (before
    that nothing is known), as seen at `now`. Members are never pruned, so the history is
    whole. The last stretch has no end when no member runs now: the cluster is still down."""
    members = list(Member.objects.filter(cluster_id=cluster_id).order_by("started_at").values(
        "name", "state", "started_at", "heartbeat_at", "stopped_at"))
    if not members:
        return []
    silent_before = now - timedelta(seconds=settings.OPSCENTER["DEAD_AFTER"])
    out: list[Down] = []
    # the latest end so far (None: still running)
    covered_to, last = _member_end(members[0], silent_before)
    for m in members[1:]:
        if covered_to is None:
            break  # a member runs to this day: nothing after is down
        if m["started_at"] > covered_to:
            out.append(Down(covered_to, m["started_at"], last))
        end, how = _member_end(m, silent_before)
        if end is None or end >= covered_to:
            covered_to, last = end, how
    if covered_to is not None:
        out.append(Down(covered_to, None, last))
    return out


@dataclass(slots=True)
class SchedulePlan:
    id: int
    job_id: int
    job: str
    segments: list[Segment]
    pauses: list[Pause]
    misfires: list[Misfire]
    _mf_firsts: list[datetime] = field(default_factory=list)
    down: list[Down] = field(default_factory=list)  # the cluster's, shared by its plans
    # The schedule's next fire, which no member has reached yet: its current next_fire_at,
    # None when the job or the schedule is paused now (or nothing is left to fire).
    reach: datetime | None = None

    def unreached(self, seg: Segment, due: datetime) -> bool:
        """Is an untaken owed fire simply not reached yet: owed under the definition in force
        now, at or after the next fire the schedule is still waiting to hand out?"""
        return self.reach is not None and seg.next_at is None and due >= self.reach

    def down_now(self, due: datetime) -> Down | None:
        """The stretch without a running member that `due` falls in, if it lasts to now."""
        d = self.down_at(due)
        return d if d is not None and d.end is None else None

    def down_at(self, due: datetime) -> Down | None:
        for d in self.down:
            if d.start <= due and (d.end is None or due < d.end):
                return d
        return None

    def segment_at(self, due: datetime) -> Segment | None:
        for seg in self.segments:
            if seg.lo <= due < seg.hi:
                return seg
        return None

    def misfire_at(self, due: datetime) -> Misfire | None:
        i = bisect_right(self._mf_firsts, due)
        while i > 0:
            i -= 1
            m = self.misfires[i]
            if m.first <= due <= m.last:
                return m
        return None


def _gap_bounds(plan: SchedulePlan, seg: Segment, now: datetime) -> list[datetime]:
    """The times where the verdict of an untaken fire can change within a segment."""
    out = [now - seg.grace - SLACK]
    if seg.next_at is not None:
        out.append(seg.next_at - seg.grace - SLACK)
    for m in plan.misfires:
        out += [m.first, m.last + _US]
    for p in plan.pauses:
        if p.start is not None:
            out.append(p.start - seg.grace - SLACK)
        if p.end is not None:
            out.append(p.end + RESUME_SLACK)
    if plan.reach is not None and seg.next_at is None:
        out.append(plan.reach)
    for d in plan.down:
        out.append(d.start)
        if d.end is not None:
            out.append(d.end)
    return out


def _gap_label(plan: SchedulePlan, seg: Segment, due: datetime,
               now: datetime) -> tuple[str, str, dict | None]:
    """Verdict, detail and record of an owed fire that has no task (constant between the
    bounds of _gap_bounds, so a range of such fires can be labelled at its start)."""
    m = plan.misfire_at(due)
    if m is not None:
        return MISFIRE, m.detail(), m.record()
    for p in plan.pauses:
        if p.covers(due, seg.grace):
            return PAUSED, p.detail(), p.record()
    limit = now - seg.grace - SLACK
    if plan.unreached(seg, due):
        # Not lost: the schedule still waits to hand it out (a member that comes back, or
        # catches up, takes it or records it under the misfire policy).
        d = plan.down_now(due)
        if d is not None:
            return DOWN, f"owed while the cluster was down: {d.detail()}", None
        if due < limit:
            return BEHIND, ("not reached yet: the schedule's next fire is still "
                            f"{text_time(plan.reach)}"), None
    if due >= limit:
        return NOT_YET, (f"no task yet; it may still start (misfire grace "
                         f"{_secs(seg.grace):g} s + {_secs(SLACK):g} s)"), None
    if seg.next_at is not None and due >= seg.next_at - seg.grace - SLACK:
        return MISSED, ("no task and no record why (due just before the definition changed "
                        f"at {text_time(seg.next_at)}: the edit dropped it)"), None
    d = plan.down_at(due)
    if d is not None:
        return MISSED, f"no task and no record why: {d.detail()}", None
    return MISSED, "no task and no record why", None


def _gap_runs(plan: SchedulePlan, seg: Segment, lo: datetime, hi: datetime,
              now: datetime) -> list[GapRun]:
    """Label the untaken owed fires of `seg` in [lo, hi), split where the verdict changes."""
    assert seg.timing is not None
    cuts = sorted({lo, hi, *(b for b in _gap_bounds(plan, seg, now) if lo < b < hi)})
    runs = []
    for a, b in itertools.pairwise(cuts):
        n = _count(seg.timing, a, b)
        if n:
            verdict, detail, record = _gap_label(plan, seg, a, now)
            runs.append(GapRun(plan.id, plan.job, seg.timing, a, b, verdict, detail, record, n))
    return runs


def classify_rows(plan: SchedulePlan, seg: Segment | None, due: datetime,
                  rows: list[TaskRow]) -> Fire:
    """The verdict of a fire time that has task rows (rows sorted by attempt, id)."""
    owed = seg is not None and seg.owes(due)
    if not owed:
        why = ("before the schedule's first definition" if seg is not None and seg.timing is None
               else "at a time the definition in force does not produce")
        return Fire(plan.id, plan.job, due, UNEXPECTED, f"task(s) {why}", rows)
    problems = []
    per_attempt = Counter(r.attempt for r in rows)
    for attempt, n in sorted(per_attempt.items()):
        if n > 1:
            ids = ", ".join(str(r.id) for r in rows if r.attempt == attempt)
            problems.append(f"{n} tasks of attempt {attempt} (tasks {ids})")
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.attempt == 1:
            continue
        src = by_id.get(r.retry_of) if r.retry_of is not None else None
        if r.retry_of is None:
            problems.append(f"attempt {r.attempt} (task {r.id}) retries no earlier attempt")
        elif src is None:
            problems.append(f"attempt {r.attempt} (task {r.id}) retries task {r.retry_of}, "
                            "which is not an attempt of this fire")
        elif src.state not in _RETRYABLE:
            problems.append(f"attempt {r.attempt} (task {r.id}) retries task {src.id}, "
                            f"which {src.state}")
    unowned = []
    for r in rows:
        # A job entered by a member that no longer owned its task (it was declared lost with
        # it): a double run if another attempt of the fire started too. Another attempt that
        # was lost counts only if its job is known to have been entered as well.
        if r.ran_unowned_at is None:
            continue
        also = [o for o in rows if o.id != r.id and o.started_at is not None
                and (o.state != Task.State.LOST or o.ran_unowned_at is not None)]
        if also:
            unowned.append(
                f"attempt {r.attempt} (task {r.id}) was entered on member {r.member or '-'} "
                f"at {text_time(r.ran_unowned_at)} although the task was declared lost with "
                "it, and " + ", ".join(f"attempt {o.attempt} (task {o.id}) on {o.member or '-'}"
                                       for o in also) + " started too")
    if problems or unowned:
        detail = "; ".join(
            (["started more than once without a recorded recovery: " + "; ".join(problems)]
             if problems else []) + (["ran twice: " + "; ".join(unowned)] if unowned else []))
        return Fire(plan.id, plan.job, due, DOUBLE, detail, rows)
    first, final = rows[0], rows[-1]
    if len(rows) == 1 and first.state == Task.State.SKIPPED:
        return Fire(plan.id, plan.job, due, MISFIRE,
                    "overlap skip: the previous run was still going (job overlap policy skip)",
                    rows, {"record": "overlap skip", "task": first.id})
    lost = [r for r in rows if r.state == Task.State.LOST]
    recoveries = [r for r in rows if r.attempt > 1 and r.trigger == Task.Trigger.RECOVERY]
    if lost and recoveries:
        text = "; ".join(f"attempt {r.attempt} ({r.trigger}) on {r.member or '-'}: {r.state}"
                         for r in rows)
        return Fire(plan.id, plan.job, due, RERUN, f"lost and recovered: {text}", rows)
    if len(rows) == 1 and first.state == Task.State.QUEUED:
        return Fire(plan.id, plan.job, due, NOT_YET,
                    f"claimed, queued since {text_time(first.created_at)} for a free slot", rows)
    if len(rows) == 1 and first.started_at is not None and first.state != Task.State.LOST:
        return Fire(plan.id, plan.job, due, RAN, "", rows, plain=True)
    if len(rows) > 1:
        detail = f"{len(rows)} attempts, the last {final.state}"
    elif first.state == Task.State.LOST:
        detail = "lost with its member and not recovered (the job does not ask for recovery)"
    else:
        detail = f"never started ({first.state})"
    return Fire(plan.id, plan.job, due, RAN, detail, rows)


# ------------------------------------------------------------------------------ building plans


def _timing_of(defn: dict) -> timing.Timing:
    t = timing.Timing(
        kind=defn.get("kind") or "",
        cron=defn.get("cron") or "",
        timezone=defn.get("timezone") or "UTC",
        interval_seconds=int(defn.get("interval_seconds") or 0),
        anchor=_dt(defn.get("anchor_at")) or _dt(defn.get("start_at")),
        run_at=_dt(defn.get("run_at")),
        start_at=_dt(defn.get("start_at")),
        end_at=_dt(defn.get("end_at")),
    )
    timing.check(t)
    return t


def _effective(defn: dict, event_time: datetime) -> datetime:
    """When a definition took over: the save's own clock reading where the definition
    carries it (an interval's anchor is the time of the save unless it has a start), else the
    time of its event."""
    anchor = _dt(defn.get("anchor_at"))
    if defn.get("kind") == "interval" and not defn.get("start_at") and anchor is not None:
        return anchor
    return event_time


def _describe(defn: dict) -> str:
    kind = defn.get("kind")
    if kind == "cron":
        return f"cron '{defn.get('cron')}' {defn.get('timezone') or 'UTC'}"
    if kind == "interval":
        return f"every {defn.get('interval_seconds')} s"
    return f"once at {defn.get('run_at')}"


def _pauses(events: list[dict], what: str, paused_now: bool) -> list[Pause]:
    """The pauses of a job or a schedule from its pause/resume events (in time order). The log
    is whole from wherever it now begins (pruning takes the oldest first), so a resume with no
    pause before it on record was paused from before that beginning: the pause was pruned."""
    out: list[Pause] = []
    open_: Pause | None = None
    last_resume: datetime | None = None
    for ev in events:
        if ev["kind"].endswith(".paused"):
            if open_ is None:
                open_ = Pause(what, ev["created_at"], None, ev["actor"], None)
        elif open_ is not None:
            open_.end, open_.resumed_by = ev["created_at"], ev["actor"]
            out.append(open_)
            open_ = None
            last_resume = ev["created_at"]
        else:
            # Resumed without a pause on record (its event was pruned, or deleted): paused
            # since the resume before, or from before the log on record.
            out.append(Pause(what, last_resume, ev["created_at"], "", ev["actor"],
                             "its pause is not in the event log"))
            last_resume = ev["created_at"]
    if open_ is not None:
        out.append(open_)
    elif paused_now:
        # Paused without an event on record: since its last resume, or from before the log
        # on record (pruned, or paused when it was created).
        out.append(Pause(what, last_resume, None, "", None,
                         "the pause is not in the event log"))
    return out


def build_plans(cluster_id: int, since: datetime, until: datetime, job_id: int | None = None,
                now: datetime | None = None) -> tuple[list[SchedulePlan], list[str]]:
    """Every schedule of the cluster (or of one job) with its definition segments in the
    window, its pauses and its misfire records, as seen at `now` (default: the database's)."""
    now = now or db_now()
    warnings: list[str] = []
    schedules = Schedule.objects.filter(cluster_id=cluster_id)
    if job_id is not None:
        schedules = schedules.filter(job_id=job_id)
    rows = list(schedules.order_by("id").values(
        "id", "job_id", "job__name", "job__paused", "paused", "created_at", "updated_at",
        "version", "next_fire_at", *Schedule.DEFINITION_FIELDS, "anchor_at"))
    if not rows:
        return [], warnings
    down = _cluster_down(cluster_id, now)
    ids = [r["id"] for r in rows]
    job_ids = sorted({r["job_id"] for r in rows})

    events = Event.objects.filter(cluster_id=cluster_id, created_at__lt=until)
    definitions: dict[int, list[dict]] = defaultdict(list)
    for ev in (events.filter(kind__in=_DEFINITION_KINDS, schedule_id__in=ids)
               .order_by("created_at", "id").values("schedule_id", "kind", "created_at", "data")):
        definitions[ev["schedule_id"]].append(ev)
    job_pauses: dict[int, list[dict]] = defaultdict(list)
    for ev in (events.filter(kind__in=_PAUSE_KINDS[:2], job_id__in=job_ids)
               .order_by("created_at", "id").values("job_id", "kind", "created_at", "actor")):
        job_pauses[ev["job_id"]].append(ev)
    schedule_pauses: dict[int, list[dict]] = defaultdict(list)
    for ev in (events.filter(kind__in=_PAUSE_KINDS[2:], schedule_id__in=ids)
               .order_by("created_at", "id").values("schedule_id", "kind", "created_at",
                                                    "actor")):
        schedule_pauses[ev["schedule_id"]].append(ev)
    misfires: dict[int, list[Misfire]] = defaultdict(list)
    for m in (MisfireRecord.objects.filter(schedule_id__in=ids, last_fire_at__gte=since,
                                           first_fire_at__lt=until)
              .order_by("first_fire_at", "id")
              .values("id", "schedule_id", "first_fire_at", "last_fire_at", "fire_count",
                      "policy", "reason", "member__name", "decided_at")):
        misfires[m["schedule_id"]].append(Misfire(
            m["id"], m["first_fire_at"], m["last_fire_at"], m["fire_count"], m["policy"],
            m["reason"], m["member__name"], m["decided_at"]))

    plans = []
    for r in rows:
        sid = r["id"]
        history = []
        for ev in definitions.get(sid, []):
            defn = (ev["data"] or {}).get("definition")
            if isinstance(defn, dict):
                history.append((_effective(defn, ev["created_at"]), ev["kind"], defn,
                                (ev["data"] or {}).get("version")))
        complete = bool(history) and history[0][1] == Event.Kind.SCHEDULE_CREATED
        if not history:
            # No definition on record: loaded in bulk without events (version 1: its current
            # definition since it was created), or its events were pruned. A changed one
            # (version 2 on) holds its current definition since its last save at the latest
            # (an interval without a start: since its anchor, the very time of the change);
            # what held before is unknown.
            current = {f: r[f] for f in (*Schedule.DEFINITION_FIELDS, "anchor_at")}
            current = {k: iso(v) if isinstance(v, datetime) else v for k, v in current.items()}
            complete = r["version"] == 1
            since_at = r["created_at"] if complete else max(r["created_at"], r["updated_at"])
            history = [(_effective(current, since_at), "", current, r["version"])]
        history.sort(key=lambda h: h[0])
        segments: list[Segment] = []

        def add(timing_, lo, hi, grace, version, describe, next_at, audited=True, sid=sid,
                segments=segments):
            lo, hi = max(lo, since), min(hi, until)
            if lo < hi:
                segments.append(Segment(sid, len(segments), timing_, lo, hi, grace, version,
                                        describe, next_at, audited))

        first_at = history[0][0]
        if not complete:
            if since < first_at:
                warnings.append(
                    f"schedule {sid} ({r['job__name']}): its definition before "
                    f"{text_time(first_at)} is not in the event log (pruned?); fires before "
                    "then are not audited")
        add(None, since, first_at, timedelta(0), None, "before its first definition", first_at,
            audited=complete)
        for i, (at, _kind, defn, version) in enumerate(history):
            next_at = history[i + 1][0] if i + 1 < len(history) else None
            grace = timedelta(seconds=int(defn.get("misfire_grace_seconds") or 0))
            try:
                t = _timing_of(defn)
            except (timing.TimingError, TypeError, ValueError) as exc:
                warnings.append(f"schedule {sid} ({r['job__name']}): definition version "
                                f"{version} cannot be computed ({exc}); nothing owed under it")
                t = None
            add(t, at, next_at or until, grace, version, _describe(defn), next_at)
        for seg in segments:
            if seg.timing is not None:
                seg.count = _count(seg.timing, seg.lo, seg.hi)
                if seg.count:
                    seg.first = timing.first_fire(seg.timing, seg.lo)
                    if seg.interval:
                        seg.last = seg.first + timedelta(
                            seconds=seg.timing.interval_seconds) * (seg.count - 1)
        pauses = (_pauses(job_pauses.get(r["job_id"], []), "job", r["job__paused"])
                  + _pauses(schedule_pauses.get(sid, []), "schedule", r["paused"]))
        mfs = misfires.get(sid, [])
        reach = None if r["job__paused"] or r["paused"] else r["next_fire_at"]
        plans.append(SchedulePlan(sid, r["job_id"], r["job__name"], segments, pauses, mfs,
                                  [m.first for m in mfs], down, reach))
    return plans, warnings


# ------------------------------------------------------------------------------ the tally


class _Tally:
    """Counts per verdict, the records that are not plainly `ran`, and the lateness and
    per-member figures of the owed fires' tasks."""

    def __init__(self, keep: bool = True, stats: bool = True) -> None:
        self.counts: Counter = Counter()
        self.items: list[Fire | GapRun] = []
        self.keep = keep
        self.stats = stats
        self.lat: dict[str | None, array] = defaultdict(lambda: array("d"))
        self.first: Counter = Counter()
        self.later: Counter = Counter()

    def add(self, fire: Fire) -> None:
        self.counts[fire.verdict] += 1
        if self.keep and not fire.plain:
            self.items.append(fire)
        if self.stats and fire.verdict != UNEXPECTED:
            for r in fire.rows:
                self.stat(r.member, r.attempt, r.started_at,
                          _secs(r.started_at - fire.due) if r.started_at else None)

    def stat(self, member, attempt, started_at, lateness) -> None:
        if started_at is None:
            return
        if attempt == 1:
            self.first[member] += 1
            self.lat[member].append(lateness)
        else:
            self.later[member] += 1

    def add_run(self, run: GapRun) -> None:
        self.counts[run.verdict] += run.count
        if self.keep:
            self.items.append(run)

    def figures(self) -> tuple[dict, list[dict]]:
        everything: list[float] = sorted(itertools.chain.from_iterable(self.lat.values()))
        overall = _figures(everything)
        members = []
        for name in sorted(set(self.first) | set(self.later), key=lambda n: (n is None, n or "")):
            values = sorted(self.lat.get(name, ()))
            members.append({"member": name, "first_attempts": self.first[name],
                            "later_attempts": self.later[name], **_figures(values, count=False)})
        return overall, members


def _figures(values: list[float], count: bool = True) -> dict:
    out = {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
           "max": values[-1] if values else None}
    if count:
        out = {"count": len(values), **out}
    return out


class _Lateness:
    """The lateness and per-member figures from counts (the set-based audit): for each member,
    how many first attempts started at each lateness, and how many later attempts started.
    The same figures as _Tally's, without a list of every value."""

    def __init__(self) -> None:
        self.values: dict[str | None, Counter] = defaultdict(Counter)
        self.first: Counter = Counter()
        self.later: Counter = Counter()

    def add_first(self, member: str | None, lateness: float, n: int = 1) -> None:
        self.first[member] += n
        self.values[member][lateness] += n

    def add_later(self, member: str | None, n: int = 1) -> None:
        self.later[member] += n

    def figures(self) -> tuple[dict, list[dict]]:
        everything: Counter = Counter()
        for values in self.values.values():
            everything.update(values)
        overall = {"count": everything.total(), **_figures_of_counts(everything)}
        members = []
        for name in sorted(set(self.first) | set(self.later), key=lambda n: (n is None, n or "")):
            members.append({"member": name, "first_attempts": self.first[name],
                            "later_attempts": self.later[name],
                            **_figures_of_counts(self.values.get(name, Counter()))})
        return overall, members


def _figures_of_counts(counts: Counter) -> dict:
    values = sorted(counts)
    cumulative = list(itertools.accumulate(counts[v] for v in values))
    return {"p50": percentile_of_counts(values, cumulative, 0.5),
            "p99": percentile_of_counts(values, cumulative, 0.99),
            "max": values[-1] if values else None}


# ------------------------------------------------------------------------------ the result


@dataclass
class AuditResult:
    cluster: str
    since: datetime
    until: datetime
    now: datetime
    method: str
    schedules: int
    counts: dict[str, int]
    lateness: dict | None
    members: list[dict] | None
    items: list[Fire | GapRun]
    warnings: list[str]
    fire_key_unique: bool

    @property
    def owed(self) -> int:
        return sum(self.counts.get(v, 0) for v in VERDICTS)

    @property
    def failed(self) -> bool:
        return any(self.counts.get(v, 0) for v in FAILING)

    def exceptions(self) -> Iterator[Fire]:
        """Every record that is not plainly `ran`, ordered by schedule and due time."""
        sources = [item.fires() if isinstance(item, GapRun) else iter((item,))
                   for item in self.items]
        return heapq.merge(*sources, key=lambda f: (f.schedule_id, f.due, f.verdict))

    def summary(self) -> dict:
        return {"type": "summary", "cluster": self.cluster, "since": iso(self.since),
                "until": iso(self.until), "audited_at": iso(self.now), "method": self.method,
                "schedules": self.schedules, "owed": self.owed,
                "counts": {v: self.counts.get(v, 0) for v in ALL_VERDICTS},
                "lateness": self.lateness, "members": self.members, "warnings": self.warnings,
                "fire_key_unique": self.fire_key_unique, "ok": not self.failed}


def fire_key_is_unique() -> bool:
    """Is the unique fire key (schedule, scheduled_for, attempt) still in the database? If
    someone dropped it, the set-based audit looks for duplicate fires the slow way."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Task._meta.db_table)
    wanted = ["schedule_id", "scheduled_for", "attempt"]
    return any(c.get("unique") and list(c.get("columns") or []) == wanted
               for c in constraints.values())


def audit(cluster, since: datetime | None = None, until: datetime | None = None, *,
          job: Job | None = None, now: datetime | None = None, method: str = "auto",
          keep: bool = True, stats: bool = True) -> AuditResult:
    """Audit the fires of `cluster` (a Cluster) owed in [since, until) (default: the last
    hour, on the database clock). `method`: auto (sql on PostgreSQL, else python), sql,
    python. keep=False drops the per-fire records (counts only); stats=False skips the
    lateness and per-member figures."""
    now = now or db_now()
    until = until or now
    since = since or until - timedelta(hours=1)
    if since >= until:
        raise AuditInputError(f"the window is empty: since ({text_time(since)}) must be before "
                              f"until ({text_time(until)})")
    if method == "auto":
        method = "sql" if connection.vendor == "postgresql" else "python"
    if method == "sql" and connection.vendor != "postgresql":
        raise AuditInputError("the set-based audit needs PostgreSQL")
    if method not in ("sql", "python"):
        raise AuditInputError(f"unknown audit method {method!r}")
    plans, warnings = build_plans(cluster.pk, since, until, job.pk if job else None, now)
    unique = fire_key_is_unique()
    if not unique:
        warnings.append("the unique fire key (schedule, scheduled_for, attempt) is missing from "
                        "the task table: duplicate fires are possible and were looked for")
    tally = _Tally(keep=keep, stats=stats)
    if method == "python":
        for fire in iter_fires(plans, since, until, now):
            tally.add(fire)
        lateness, members = tally.figures() if stats else (None, None)
    else:
        lateness, members = _audit_sql(plans, since, until, now, tally, unique, stats)
    tally.items.sort(key=lambda x: (x.schedule_id, x.lo if isinstance(x, GapRun) else x.due))
    return AuditResult(cluster.name, since, until, now, method, len(plans),
                       {v: tally.counts.get(v, 0) for v in ALL_VERDICTS}, lateness, members,
                       tally.items, warnings, unique)


# ------------------------------------------------------------------------------ python: per fire


def _ledger(schedule_ids: list[int], since: datetime, until: datetime) -> Iterator[tuple]:
    qs = (Task.objects.filter(schedule_id__in=schedule_ids, scheduled_for__gte=since,
                              scheduled_for__lt=until)
          .order_by("schedule_id", "scheduled_for", "attempt", "id")
          .values_list(*_ROW_ORM_COLUMNS))
    for values in qs.iterator(chunk_size=5000):
        yield _row(values)


def _owed(plan: SchedulePlan, segments: Iterable[Segment]) -> Iterator[tuple[datetime, Segment]]:
    for seg in segments:
        if seg.timing is not None and seg.count:
            for due in _fires(seg.timing, seg.lo, seg.hi):
                yield due, seg


def _merge(plan: SchedulePlan, segments: list[Segment],
           groups: Iterator[tuple[datetime, list[TaskRow]]], now: datetime) -> Iterator[Fire]:
    """Owed fires of `segments` merged with the ledger's fire times (both ascending)."""
    owed = _owed(plan, segments)
    nxt = next(owed, None)
    for due, rows in groups:
        while nxt is not None and nxt[0] < due:
            verdict, detail, record = _gap_label(plan, nxt[1], nxt[0], now)
            yield Fire(plan.id, plan.job, nxt[0], verdict, detail, record=record)
            nxt = next(owed, None)
        if nxt is not None and nxt[0] == due:
            yield classify_rows(plan, nxt[1], due, rows)
            nxt = next(owed, None)
            continue
        seg = plan.segment_at(due)
        if seg is not None and seg.audited:
            yield classify_rows(plan, seg, due, rows)
    while nxt is not None:
        verdict, detail, record = _gap_label(plan, nxt[1], nxt[0], now)
        yield Fire(plan.id, plan.job, nxt[0], verdict, detail, record=record)
        nxt = next(owed, None)


def _group(rows: Iterator[tuple]) -> Iterator[tuple[int, Iterator[tuple[datetime, list]]]]:
    """(schedule id, iterator of (fire time, rows)) from rows ordered by schedule, time."""
    for sid, of_schedule in itertools.groupby(rows, key=lambda r: r[0]):
        yield sid, ((due, [r[2] for r in same])
                    for due, same in itertools.groupby(of_schedule, key=lambda r: r[1]))


def iter_fires(plans: list[SchedulePlan], since: datetime, until: datetime,
               now: datetime) -> Iterator[Fire]:
    """Every owed fire (and every unexpected ledger time) of `plans`, by schedule id and due
    time, streamed: memory stays flat however long the ledger."""
    by_id = {p.id: p for p in plans}
    ordered = sorted(by_id)
    ledger = _group(_ledger(ordered, since, until))
    pending = next(ledger, None)
    for sid in ordered:
        plan = by_id[sid]
        if pending is not None and pending[0] == sid:
            groups = pending[1]
            yield from _merge(plan, plan.segments, groups, now)
            pending = next(ledger, None)
        else:
            yield from _merge(plan, plan.segments, iter(()), now)


def audit_stream(cluster, since: datetime, until: datetime, *, job: Job | None = None,
                 now: datetime | None = None) -> tuple[AuditResult, Iterator[Fire]]:
    """For the full per-fire list: the result (filled in once the iterator is exhausted)
    and an iterator over every fire, owed or unexpected."""
    now = now or db_now()
    if since >= until:
        raise AuditInputError(f"the window is empty: since ({text_time(since)}) must be before "
                              f"until ({text_time(until)})")
    plans, warnings = build_plans(cluster.pk, since, until, job.pk if job else None, now)
    unique = fire_key_is_unique()
    tally = _Tally(keep=False)
    result = AuditResult(cluster.name, since, until, now, "python", len(plans), {}, None, None,
                         [], warnings, unique)

    def stream() -> Iterator[Fire]:
        for fire in iter_fires(plans, since, until, now):
            tally.add(fire)
            yield fire
        result.counts = {v: tally.counts.get(v, 0) for v in ALL_VERDICTS}
        result.lateness, result.members = tally.figures()

    return result, stream()


# ------------------------------------------------------------------------------ sql: set-based

_SEGS = ("WITH seg AS (SELECT * FROM unnest(%s::int[], %s::bigint[], %s::timestamptz[], "
         "%s::timestamptz[], %s::timestamptz[], %s::interval[], %s::timestamptz[], "
         "%s::timestamptz[]) AS s(k, sid, lo, hi, anchor, stride, first, last)) ")
# On the segment's grid: a whole number of intervals from the anchor. date_bin() is integer
# arithmetic on the timestamps' microseconds (the same test as (t - anchor) mod interval = 0),
# several times cheaper per row than extract(epoch ...), which is numeric in PostgreSQL 14+.
_ON_GRID = "date_bin(seg.stride, {t}.scheduled_for, seg.anchor) = {t}.scheduled_for"
_OFF_GRID = _ON_GRID.replace(" = ", " <> ")
# A row that needs a closer look: not a plain first attempt, or not at an owed time.
_ODD = ("({t}.attempt > 1 OR {t}.started_at IS NULL OR {t}.state = 'lost' "
        "OR {t}.ran_unowned_at IS NOT NULL OR seg.first IS NULL "
        "OR {t}.scheduled_for < seg.first OR {t}.scheduled_for > seg.last OR " + _OFF_GRID + ")")

# A task of an owed fire (any attempt): on the grid, within the first and last fire.
_OWED = ("(seg.first IS NOT NULL AND {t}.scheduled_for >= seg.first "
         "AND {t}.scheduled_for <= seg.last AND " + _ON_GRID + ")")
# A first attempt at an owed time.
_GOOD = "({t}.attempt = 1 AND " + _OWED + ")"

# The segments joined to the window's tasks, for the two queries that read the whole window.
# The join goes through scheduler_schedule on purpose: the planner has no statistics for
# unnest()'s output, and past 200 rows it assumes the worst skew for seg.sid and hashes the
# task table instead (3.6 million rows, spilling to disk, no parallel scan). Joined on
# scheduler_schedule.id, which it knows to be unique, it builds the hash from the segments and
# probes it from a parallel sequential scan of the tasks (and, for a few segments, it still
# picks index scans).
_WINDOW = ("FROM seg JOIN scheduler_schedule s ON s.id = seg.sid "
           "JOIN scheduler_task t ON t.schedule_id = s.id AND t.scheduled_for >= seg.lo "
           "AND t.scheduled_for < seg.hi ")
_COUNTS_SQL = _SEGS + (
    "SELECT seg.k, count(*) FILTER (WHERE " + _GOOD.format(t="t") + "), "
    "count(*) FILTER (WHERE " + _ODD.format(t="t") + ") " + _WINDOW + "GROUP BY seg.k"
)
# Gaps: on-grid first attempts whose predecessor is not one interval before them.
_GAPS_SQL = _SEGS + (
    "SELECT k, cur, prev, nxt FROM (SELECT seg.k, seg.stride, t.scheduled_for AS cur, "
    "lag(t.scheduled_for) OVER w AS prev, lead(t.scheduled_for) OVER w AS nxt "
    "FROM seg JOIN scheduler_task t ON t.schedule_id = seg.sid AND t.attempt = 1 "
    "AND t.scheduled_for >= seg.first AND t.scheduled_for <= seg.last "
    "WHERE " + _ON_GRID.format(t="t") + " "
    "WINDOW w AS (PARTITION BY seg.k ORDER BY t.scheduled_for)) x "
    "WHERE prev IS NULL OR nxt IS NULL OR cur - prev <> stride "
    "ORDER BY k, cur"
)
# The rows of every fire time that has an odd row (in the segments given), of every time in
# the ranges given (all of it), and of the (schedule, time) pairs given.
_ROWS_SQL = _SEGS + (
    ", ranges AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) "
    "AS r(sid, lo, hi)), pairs AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[]) "
    "AS p(sid, at)) "
    "SELECT " + _ROW_SQL_COLUMNS + " FROM scheduler_task t "
    "LEFT JOIN scheduler_member m ON m.id = t.member_id "
    "WHERE (t.schedule_id, t.scheduled_for) IN ("
    "SELECT o.schedule_id, o.scheduled_for FROM seg JOIN scheduler_task o "
    "ON o.schedule_id = seg.sid AND o.scheduled_for >= seg.lo AND o.scheduled_for < seg.hi "
    "WHERE " + _ODD.format(t="o") + " "
    "UNION SELECT o.schedule_id, o.scheduled_for FROM ranges JOIN scheduler_task o "
    "ON o.schedule_id = ranges.sid AND o.scheduled_for >= ranges.lo "
    "AND o.scheduled_for < ranges.hi "
    "UNION SELECT sid, at FROM pairs) "
    "ORDER BY t.schedule_id, t.scheduled_for, t.attempt, t.id"
)
# Lateness and members, from the tasks of the owed fires of interval segments: how many tasks
# of each member started at each exact lateness (first attempts; later attempts are only
# counted). A hash aggregate with one group per member and distinct lateness (a few dozen
# when lateness is in whole milliseconds, some 10^5 when it is spread over 0.1 s to the
# microsecond) runs in parallel, where percentile_cont needed all 3.6 million values sorted
# in one process; the percentiles are then worked out exactly from the counts
# (percentile_of_counts). The lateness is the interval itself: converted in Python it is the
# same float the per-fire audit computes. Rows that are not owed fall into one group per
# member with zero counts.
_STATS_SQL = _SEGS + (
    "SELECT t.member_id, CASE WHEN t.attempt = 1 AND " + _OWED.format(t="t") + " "
    "THEN t.started_at - t.scheduled_for END, "
    "count(*) FILTER (WHERE t.attempt = 1 AND t.started_at IS NOT NULL AND "
    + _OWED.format(t="t") + "), "
    "count(*) FILTER (WHERE t.attempt > 1 AND t.started_at IS NOT NULL AND "
    + _OWED.format(t="t") + ") " + _WINDOW + "GROUP BY 1, 2"
)


def _seg_params(segs: list[Segment], keys: dict[int, int]) -> list:
    cols: list[list] = [[], [], [], [], [], [], [], []]
    for seg in segs:
        t = seg.timing
        assert t is not None and t.anchor is not None
        for col, value in zip(cols, (
                keys[id(seg)], seg.schedule_id, seg.lo, seg.hi, t.anchor,
                timedelta(seconds=t.interval_seconds), seg.first, seg.last), strict=True):
            col.append(value)
    return cols


def _audit_sql(plans: list[SchedulePlan], since: datetime, until: datetime, now: datetime,
               tally: _Tally, unique: bool, stats: bool):
    by_id = {p.id: p for p in plans}
    interval: list[Segment] = []
    other: list[Segment] = []  # cron, once, before the history: their ledger is read in full
    for plan in plans:
        for seg in plan.segments:
            if seg.interval:
                interval.append(seg)
            elif seg.audited:
                other.append(seg)
    keys = {id(seg): i for i, seg in enumerate(interval)}
    params = _seg_params(interval, keys)

    with connection.cursor() as cursor:
        counts: dict[int, tuple[int, int]] = {}
        if interval:
            cursor.execute(_COUNTS_SQL, params)
            counts = {k: (good, odd) for k, good, odd in cursor.fetchall()}
        odd_segs = [s for s in interval if counts.get(keys[id(s)], (0, 0))[1]]
        irregular = [s for s in interval if s.count and
                     (not unique or counts.get(keys[id(s)], (0, 0))[0] != s.count)]

        # Gaps of the irregular segments, as [lo, hi) ranges of owed fire times.
        gaps: dict[int, list[list[datetime]]] = defaultdict(list)
        dups: list[tuple[int, datetime]] = []
        seen_rows: set[int] = set()
        if irregular:
            cursor.execute(_GAPS_SQL, _seg_params(irregular, keys))
            for k, cur, prev, nxt in cursor.fetchall():
                seg = interval[k]
                seen_rows.add(k)
                if prev is None and cur > seg.first:
                    gaps[k].append([seg.first, cur])
                if prev is not None and prev == cur:
                    dups.append((seg.schedule_id, cur))
                elif prev is not None and cur - prev != timedelta(
                        seconds=seg.timing.interval_seconds):
                    gaps[k].append([prev + _US, cur])
                if nxt is None and cur < seg.last:
                    gaps[k].append([cur + _US, seg.last + _US])
            for seg in irregular:
                if keys[id(seg)] not in seen_rows:
                    gaps[keys[id(seg)]].append([seg.first, seg.last + _US])

        # The rows worth a closer look, and the whole ledger of the other segments.
        fetched: list[tuple] = []
        if odd_segs or other or dups:
            ranges = [[s.schedule_id for s in other], [s.lo for s in other],
                      [s.hi for s in other]]
            pairs = [[d[0] for d in dups], [d[1] for d in dups]]
            cursor.execute(_ROWS_SQL, [*_seg_params(odd_segs, keys), *ranges, *pairs])
            fetched = [_row(v) for v in cursor.fetchall()]

    grouped: dict[int, dict[datetime, list[TaskRow]]] = defaultdict(dict)
    for sid, due, row in fetched:
        grouped[sid].setdefault(due, []).append(row)

    lateness = _Lateness()
    # Other segments: merged fire by fire, as the python audit does.
    other_by_plan: dict[int, list[Segment]] = defaultdict(list)
    for seg in other:
        other_by_plan[seg.schedule_id].append(seg)
    for sid, segs in other_by_plan.items():
        plan = by_id[sid]
        mine = grouped.get(sid, {})
        groups = sorted(((due, rows) for due, rows in mine.items()
                         if any(s.lo <= due < s.hi for s in segs)), key=lambda g: g[0])
        for fire in _merge(plan, segs, iter(groups), now):
            _add_collect(tally, fire, lateness)

    # Interval segments: arithmetic counts, minus the gaps, minus the fires looked at closely.
    special: dict[int, list[datetime]] = defaultdict(list)
    for seg in interval:
        k = keys[id(seg)]
        plan = by_id[seg.schedule_id]
        mine = grouped.get(seg.schedule_id, {})
        times = sorted(due for due in mine if seg.lo <= due < seg.hi)
        owed_special = 0
        for due in times:
            fire = classify_rows(plan, seg, due, mine[due])
            tally.counts[fire.verdict] += 1
            if tally.keep and not fire.plain:
                tally.items.append(fire)
            if fire.verdict != UNEXPECTED:
                owed_special += 1
                special[k].append(due)
        gap_fires = 0
        for lo, hi in gaps.get(k, []):
            points = [d for d in special.get(k, []) if lo <= d < hi]
            for a, b in _split(lo, hi, points):
                for run in _gap_runs(plan, seg, a, b, now):
                    gap_fires += run.count
                    tally.add_run(run)
        tally.counts[RAN] += seg.count - gap_fires - owed_special

    if not stats:
        return None, None
    stat_segs = [s for s in interval if s.count]
    if stat_segs:
        with transaction.atomic(), connection.cursor() as cursor:
            # The planner cannot know how few distinct lateness values there are: it expects
            # one group per row and would sort 3.6 million rows (on disk) to aggregate them.
            # Hashing is right here. Transaction-local, and put back to what it was after
            # this query, so neither the session nor a caller's transaction keeps it.
            cursor.execute("SELECT current_setting('enable_sort')")
            before = cursor.fetchone()[0]
            cursor.execute("SELECT set_config('enable_sort', 'off', true)")
            cursor.execute(_STATS_SQL, _seg_params(stat_segs, keys))
            histogram = cursor.fetchall()
            cursor.execute("SELECT set_config('enable_sort', %s, true)", [before])
        names = dict(Member.objects.filter(pk__in={r[0] for r in histogram if r[0]})
                     .values_list("pk", "name"))
        for member_id, late, first, later in histogram:
            name = names.get(member_id)
            if first:
                lateness.add_first(name, _secs(late), first)
            if later:
                lateness.add_later(name, later)
    return lateness.figures()


def _add_collect(tally: _Tally, fire: Fire, lateness: _Lateness) -> None:
    """Count a fire, and its started tasks in the lateness figures."""
    tally.counts[fire.verdict] += 1
    if tally.keep and not fire.plain:
        tally.items.append(fire)
    if fire.verdict == UNEXPECTED:
        return
    for r in fire.rows:
        if r.started_at is not None and r.attempt == 1:
            lateness.add_first(r.member, _secs(r.started_at - fire.due))
        elif r.started_at is not None:
            lateness.add_later(r.member)


def _split(lo: datetime, hi: datetime, points: list[datetime]) -> list[tuple[datetime, datetime]]:
    """[lo, hi) without the given instants."""
    out, start = [], lo
    for p in sorted(points):
        if start < p:
            out.append((start, p))
        start = p + _US
    if start < hi:
        out.append((start, hi))
    return out


# ------------------------------------------------------------------------------ for the admin


def job_counts(job: Job, windows: dict[str, timedelta]) -> dict[str, dict[str, int]]:
    """Counts per verdict of one job for each window ending now (cheap: no per-fire records,
    no lateness figures)."""
    now = db_now()
    out = {}
    for label, span in windows.items():
        result = audit(job.cluster, now - span, now, job=job, now=now, keep=False, stats=False)
        out[label] = result.counts
    return out
