"""Pure scheduling maths: when a schedule fires, and what to do about fires that were missed.

No Django here (stdlib + cronsim only), so the daemon, the console and the tests share one
implementation. Every datetime in and out is timezone-aware; results are in UTC.

Kinds:
- ``cron``: a 5-field expression evaluated in ``timezone`` (cronsim's DST rules: a wall time
  in a spring-forward gap fires at the end of the gap; a fixed wall time that occurs twice on
  fall-back fires once, at the first occurrence; wildcard-hour expressions fire at both).
- ``interval``: fires at ``anchor + k * interval_seconds`` for integer ``k`` (no drift).
- ``once``: fires at ``run_at``.
``start_at`` / ``end_at`` bound every kind inclusively; they filter, they never re-anchor.

Python's datetimes end in the years 1 and 9999: a fire that would fall outside them does not
exist, so every query here stops there (no OverflowError reaches a caller, whatever `now`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

KINDS = ("cron", "interval", "once")
POLICIES = ("skip", "run_once", "run_all")

_ONE_US = timedelta(microseconds=1)
_ONE_S = timedelta(seconds=1)
# Keys that zoneinfo can load from the system's zone directory but that are not IANA zone
# names: they depend on the host's configuration or carry no real rules.
_NON_IANA_KEYS = frozenset({"localtime", "posixrules", "Factory"})
_NON_IANA_PREFIXES = ("posix/", "right/")
_UTC_KEYS = frozenset({"UTC", "Etc/UTC"})
# Any valid datetime works as cronsim's start when we only want the expression parsed.
_PARSE_START = datetime(2000, 1, 1, tzinfo=UTC)


class TimingError(ValueError):
    """Bad scheduling input; the message is meant for an operator."""


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires. Frozen, so hashable and safe to cache."""

    kind: str  # "cron" | "interval" | "once"
    cron: str = ""  # 5-field cron, evaluated in `timezone`
    timezone: str = "UTC"  # IANA name
    interval_seconds: int = 0  # interval kind: > 0
    anchor: datetime | None = None  # interval kind: fires at anchor + k*interval
    run_at: datetime | None = None  # once kind
    start_at: datetime | None = None  # no fire before this (inclusive)
    end_at: datetime | None = None  # no fire after this (inclusive)


@dataclass(frozen=True, slots=True)
class Misfire:
    """A run of consecutive owed fires that were not run, recorded as one range."""

    first: datetime
    last: datetime
    count: int
    reason: str  # "skip" | "run_once" | "run_all_limit"


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What to do now with a schedule whose stored next fire is due."""

    run: list[datetime]  # scheduled times to start now, ascending
    misfire: Misfire | None
    next_fire: datetime | None  # first fire strictly after `now`


@dataclass(frozen=True, slots=True)
class PreviewFire:
    at: datetime  # UTC
    local: datetime  # in the schedule's zone
    note: str  # "" or a DST note


# --------------------------------------------------------------------------- validation


def validate_cron(expr: str) -> str:
    """Return the normalised expression (stripped, single spaces) or raise TimingError."""
    if not isinstance(expr, str):
        raise TimingError(f"Invalid cron expression {expr!r}: it must be text")
    fields = expr.split()
    if len(fields) != 5:
        raise TimingError(
            f"Invalid cron expression '{expr}': expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    normalised = " ".join(fields)
    try:
        CronSim(normalised, _PARSE_START)
    except CronSimError as exc:
        raise TimingError(f"Invalid cron expression '{expr}': {exc}") from None
    except (ValueError, IndexError, AssertionError):
        # cronsim is meant to raise only CronSimError; never let a parser slip become a 500.
        raise TimingError(f"Invalid cron expression '{expr}'") from None
    return normalised


def validate_timezone(name: str) -> ZoneInfo:
    """Return the ZoneInfo for an IANA zone name or raise TimingError."""
    if not isinstance(name, str) or not name.strip():
        raise TimingError(
            f"Unknown time zone {name!r}: a zone name such as 'Europe/Berlin' is required"
        )
    if name in _NON_IANA_KEYS or name.startswith(_NON_IANA_PREFIXES):
        raise TimingError(f"Unknown time zone '{name}': not an IANA zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError covers directory names such as "Europe"; ValueError covers paths.
        raise TimingError(f"Unknown time zone '{name}'") from None


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TimingError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TimingError(f"{what} must be timezone-aware (got naive {value.isoformat()})")
    return value


def check(t: Timing) -> None:
    """Validate a Timing fully for its kind; raise TimingError on the first problem."""
    if not isinstance(t, Timing):
        raise TimingError(f"Expected a Timing, got {type(t).__name__}")
    if t.kind not in KINDS:
        raise TimingError(f"Unknown schedule kind '{t.kind}': expected one of {', '.join(KINDS)}")
    validate_timezone(t.timezone)
    for what in ("anchor", "run_at", "start_at", "end_at"):
        value = getattr(t, what)
        if value is not None:
            _aware(value, what)
    if t.start_at is not None and t.end_at is not None and t.end_at < t.start_at:
        raise TimingError(
            f"end_at ({t.end_at.isoformat()}) is before start_at ({t.start_at.isoformat()})"
        )
    if t.kind == "cron":
        if not t.cron or not isinstance(t.cron, str) or not t.cron.strip():
            raise TimingError("A cron schedule needs a cron expression")
        validate_cron(t.cron)
    elif t.kind == "interval":
        seconds = t.interval_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise TimingError(f"interval_seconds must be a whole number, got {seconds!r}")
        if seconds <= 0:
            raise TimingError(f"interval_seconds must be greater than 0, got {seconds}")
        if t.anchor is None:
            raise TimingError("An interval schedule needs an anchor time")
    elif t.run_at is None:
        raise TimingError("A once schedule needs a run_at time")


# --------------------------------------------------------------------------- core maths


def _zone(t: Timing) -> ZoneInfo:
    return ZoneInfo(t.timezone)  # zoneinfo caches instances by key


def _interval_k_ceil(t: Timing, x: datetime) -> int:
    """Smallest k with anchor + k*interval >= x (exact integer microseconds)."""
    assert t.anchor is not None
    delta_us = (x - t.anchor) // _ONE_US
    step_us = t.interval_seconds * 1_000_000
    return -(-delta_us // step_us)


def _interval_k_floor(t: Timing, x: datetime) -> int:
    """Largest k with anchor + k*interval <= x."""
    assert t.anchor is not None
    return ((x - t.anchor) // _ONE_US) // (t.interval_seconds * 1_000_000)


def _interval_at(t: Timing, k: int) -> datetime | None:
    """The k-th fire, in UTC; None when it is outside datetime's range."""
    assert t.anchor is not None
    try:
        return t.anchor.astimezone(UTC) + timedelta(seconds=t.interval_seconds) * k
    except OverflowError:
        return None


def _minus_us(x: datetime) -> datetime:
    try:
        return x - _ONE_US
    except OverflowError:  # the first instant there is: nothing is before it anyway
        return x


def _plus_us(x: datetime) -> datetime:
    try:
        return x + _ONE_US
    except OverflowError:
        return x


def _cron_after(t: Timing, after: datetime) -> Iterator[datetime]:
    """Cron fires strictly after `after`, in UTC, strictly increasing (unbounded)."""
    try:
        yield from _cron_after_unguarded(t, after)
    except OverflowError:
        return  # the next fire would be past the year 9999 (or the zone's edge of it)


def _cron_after_unguarded(t: Timing, after: datetime) -> Iterator[datetime]:
    zone = _zone(t)
    # cronsim skips its DST handling for datetime's own UTC, which is also faster.
    start = after.astimezone(UTC if t.timezone in _UTC_KEYS else zone)
    last = after.astimezone(UTC)
    # cronsim yields times after `start` in *wall* time for fixed-hour expressions, so from
    # the second occurrence of a repeated hour it can yield the first one (earlier in UTC);
    # the guard keeps the sequence strictly after `after` and strictly increasing.
    for fire in CronSim(t.cron, start):
        fire_utc = fire.astimezone(UTC)
        if fire_utc > last:
            last = fire_utc
            yield fire_utc


def _next_unbounded(t: Timing, after: datetime) -> datetime | None:
    """First fire strictly after `after`, ignoring start_at/end_at."""
    if t.kind == "interval":
        # Datetimes have microsecond resolution, so "> after" is ">= after + 1 µs".
        return _interval_at(t, _interval_k_ceil(t, _plus_us(after)))
    if t.kind == "once":
        assert t.run_at is not None
        run_at = t.run_at.astimezone(UTC)
        return run_at if run_at > after else None
    return next(_cron_after(t, after), None)


def _lower(t: Timing, after: datetime) -> datetime:
    """Combine a strict `after` with the inclusive start_at into one strict bound."""
    if t.start_at is not None and _minus_us(t.start_at) > after:
        return _minus_us(t.start_at)
    return after


def _iter_fires(t: Timing, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
    """Fires in (after, until] respecting start/end, ascending. `t` must be checked."""
    hi = t.end_at if until is None or (t.end_at is not None and t.end_at < until) else until
    lo = _lower(t, after)
    if t.kind == "cron":
        for fire in _cron_after(t, lo):
            if hi is not None and fire > hi:
                return
            yield fire
        return
    if t.kind == "once":
        fire = _next_unbounded(t, lo)
        if fire is not None and (hi is None or fire <= hi):
            yield fire
        return
    # interval: k-th fire computed from the anchor each time, so no drift accumulates.
    k = _interval_k_ceil(t, _plus_us(lo))
    while True:
        fire = _interval_at(t, k)
        if fire is None or (hi is not None and fire > hi):
            return
        yield fire
        k += 1


# --------------------------------------------------------------------------- public queries


def next_fire(t: Timing, after: datetime) -> datetime | None:
    """First fire strictly after `after`, respecting start/end; None when there is none."""
    check(t)
    _aware(after, "after")
    return _next_fire(t, after)


def _next_fire(t: Timing, after: datetime) -> datetime | None:
    try:
        fire = _next_unbounded(t, _lower(t, after))
    except OverflowError:
        return None
    if fire is None or (t.end_at is not None and fire > t.end_at):
        return None
    return fire


def first_fire(t: Timing, at_or_after: datetime) -> datetime | None:
    """First fire at or after `at_or_after`, respecting start/end."""
    _aware(at_or_after, "at_or_after")
    return next_fire(t, _minus_us(at_or_after))


def fires_between(t: Timing, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """Fires in (after, until], at most `limit`, ascending."""
    check(t)
    _aware(after, "after")
    _aware(until, "until")
    if limit < 0:
        raise TimingError(f"limit must be 0 or more, got {limit}")
    out: list[datetime] = []
    if limit == 0 or until <= after:
        return out
    for fire in _iter_fires(t, after, until):
        out.append(fire)
        if len(out) >= limit:
            break
    return out


def count_fires(t: Timing, after: datetime, until: datetime) -> int:
    """Number of fires in (after, until]; arithmetic for interval/once, iterates for cron."""
    check(t)
    _aware(after, "after")
    _aware(until, "until")
    if t.kind == "cron":
        return sum(1 for _ in _iter_fires(t, after, until))
    hi = until if t.end_at is None or until < t.end_at else t.end_at
    lo = _lower(t, after)
    if hi <= lo:
        return 0
    if t.kind == "once":
        assert t.run_at is not None
        return 1 if lo < t.run_at <= hi else 0
    return max(0, _interval_k_floor(t, hi) - _interval_k_floor(t, lo))


# --------------------------------------------------------------------------- misfires


class _Grid(Sequence[datetime]):
    """Interval fires k0 .. k0+n-1 as a lazy sequence, so an outage costs O(1) memory."""

    def __init__(self, t: Timing, k0: int, n: int) -> None:
        self._t, self._k0, self._n = t, k0, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        fire = _interval_at(self._t, self._k0 + i)
        assert fire is not None  # only indices of fires <= now are ever built
        return fire


class _Owed(Sequence[datetime]):
    """The stored due time (if still a valid fire) followed by the later owed fires."""

    def __init__(self, head: list[datetime], rest: Sequence[datetime]) -> None:
        self._head, self._rest = head, rest

    def __len__(self) -> int:
        return len(self._head) + len(self._rest)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i < len(self._head):
            return self._head[i]
        return self._rest[i - len(self._head)]


def _owed(t: Timing, due: datetime, now: datetime) -> Sequence[datetime]:
    """`due` (if within start/end) and every later fire <= now, ascending, in UTC."""
    due = due.astimezone(UTC)
    in_bounds = (t.start_at is None or due >= t.start_at) and (t.end_at is None or due <= t.end_at)
    head = [due] if in_bounds else []
    if t.kind != "interval":
        return _Owed(head, list(_iter_fires(t, due, now)))
    hi = now if t.end_at is None or now < t.end_at else t.end_at
    lo = _lower(t, due)
    k0 = _interval_k_ceil(t, _plus_us(lo))
    n = max(0, _interval_k_floor(t, hi) - k0 + 1) if hi > lo else 0
    return _Owed(head, _Grid(t, k0, n))


def _range(items: Sequence[datetime], start: int, stop: int, reason: str) -> Misfire | None:
    if stop <= start:
        return None
    return Misfire(first=items[start], last=items[stop - 1], count=stop - start, reason=reason)


def plan_fires(
    t: Timing,
    due: datetime,
    now: datetime,
    *,
    grace: timedelta,
    policy: str,
    run_all_limit: int = 100,
) -> FirePlan:
    """Decide which owed fires to start now and which to record as misfired.

    Owed fires are `due` and every later fire <= now. Those >= now - grace are on time and
    always run; the late ones are handled by `policy`. Interval schedules are pure
    arithmetic: a day's outage of a 1-second schedule costs the same as one missed fire.
    """
    check(t)
    _aware(due, "due")
    _aware(now, "now")
    if policy not in POLICIES:
        raise TimingError(
            f"Unknown misfire policy '{policy}': expected one of {', '.join(POLICIES)}"
        )
    if not isinstance(grace, timedelta) or grace < timedelta(0):
        raise TimingError(f"grace must be a timedelta of 0 or more, got {grace!r}")
    if isinstance(run_all_limit, bool) or not isinstance(run_all_limit, int) or run_all_limit < 0:
        raise TimingError(f"run_all_limit must be a whole number >= 0, got {run_all_limit!r}")
    if due > now:
        return FirePlan(run=[], misfire=None, next_fire=due.astimezone(UTC))

    items = _owed(t, due, now)
    n = len(items)
    # bisect works on any sequence, so for intervals this is O(log n) arithmetic lookups.
    try:
        cutoff = now - grace
    except OverflowError:
        cutoff = datetime.min.replace(tzinfo=UTC)  # nothing owed is older than that
    n_late = bisect.bisect_left(items, cutoff)
    on_time = items[n_late:n]
    misfire: Misfire | None
    if policy == "skip":
        run = on_time
        misfire = _range(items, 0, n_late, "skip")
    elif policy == "run_once":
        if on_time or n_late == 0:
            run = on_time
            misfire = _range(items, 0, n_late, "run_once")
        else:
            # Coalesce: the latest late fire stands in for all of them.
            run = [items[n_late - 1]]
            misfire = _range(items, 0, n_late - 1, "run_once")
    else:
        first_run = max(0, n_late - run_all_limit)
        run = items[first_run:n_late] + on_time
        misfire = _range(items, 0, first_run, "run_all_limit")
    return FirePlan(run=run, misfire=misfire, next_fire=_next_fire(t, now))


# --------------------------------------------------------------------------- preview


def _cron_matches(expr: str, wall: datetime) -> bool:
    """Does the cron expression match this naive wall time (to the second)?"""
    return next(CronSim(expr, wall - _ONE_S), None) == wall


def _is_imaginary(wall: datetime, zone: ZoneInfo) -> bool:
    local = wall.replace(tzinfo=zone)
    return local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall


def _dst_note(expr: str, local: datetime, zone: ZoneInfo) -> str:
    wall = local.replace(tzinfo=None)
    other = local.replace(fold=1 - local.fold)
    if other.utcoffset() != local.utcoffset():
        # A real wall time with two offsets: it occurs twice; fold says which one this is.
        which = "second" if local.fold else "first"
        return (
            f"DST repeat: {wall:%H:%M} occurs twice on {wall:%Y-%m-%d}; "
            f"fires at the {which} ({local.tzname()})"
        )
    if _cron_matches(expr, wall):
        return ""
    # The fire's wall time is not one the expression names: cronsim moved a nominal time
    # that fell into a spring-forward gap to the end of the gap. Find that nominal time by
    # evaluating the expression on wall-clock time from just before the fire.
    # (Arithmetic in UTC: subtracting from an aware local time would be wall-clock maths.)
    before = (local.astimezone(UTC) - _ONE_S).astimezone(zone).replace(tzinfo=None)
    nominal = next(CronSim(expr, before), None)
    if nominal is None or not _is_imaginary(nominal, zone):
        return ""
    return (
        f"DST gap: {nominal:%H:%M} does not exist on {nominal:%Y-%m-%d}, "
        f"fires at {wall:%H:%M} {local.tzname()}"
    )


def preview(t: Timing, now: datetime, count: int = 10) -> list[PreviewFire]:
    """The next `count` fires at or after `now`, with local times and DST notes for cron."""
    check(t)
    _aware(now, "now")
    if count < 0:
        raise TimingError(f"count must be 0 or more, got {count}")
    zone = _zone(t)
    out: list[PreviewFire] = []
    if count == 0:
        return out
    expr = validate_cron(t.cron) if t.kind == "cron" else ""
    for at in _iter_fires(t, _minus_us(now)):
        try:
            local = at.astimezone(zone)
        except OverflowError:
            break  # its wall time would be past the year 9999
        try:
            note = _dst_note(expr, local, zone) if expr else ""
        except OverflowError:
            note = ""  # a fire in the last hours of the year 9999
        out.append(PreviewFire(at=at, local=local, note=note))
        if len(out) >= count:
            break
    return out


# ---------------------------------------------------------------- retries

# The longest a retry waits: the doubling reaches it after a few dozen attempts, and
# max_retries has no bound, so 2^(attempt-1) alone would overflow (float, then timedelta).
RETRY_BACKOFF_CAP = 24 * 3600.0


def retry_delay(backoff_seconds: float, attempt: int) -> float:
    """Seconds before the retry of a task's `attempt` (the first attempt is 1):
    backoff × 2^(attempt-1), at most RETRY_BACKOFF_CAP."""
    if backoff_seconds <= 0:
        return 0.0
    # 2.0 ** 1024 raises OverflowError, and 2^1000 times any backoff is past the cap (a float
    # product too large is inf, not an error).
    return min(backoff_seconds * 2.0 ** min(max(attempt - 1, 0), 1000), RETRY_BACKOFF_CAP)
