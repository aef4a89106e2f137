"""Tests for scheduler.timing: cron/interval/once maths, DST, misfire planning, preview."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.timing import (
    FirePlan,
    Misfire,
    Timing,
    TimingError,
    check,
    count_fires,
    fires_between,
    first_fire,
    next_fire,
    plan_fires,
    preview,
    validate_cron,
    validate_timezone,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
S = timedelta(seconds=1)
MIN = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expr: str, zone: str = "UTC", **kw) -> Timing:
    return Timing(kind="cron", cron=expr, timezone=zone, **kw)


def every(seconds: int, anchor: datetime, **kw) -> Timing:
    return Timing(kind="interval", interval_seconds=seconds, anchor=anchor, **kw)


def chain(t: Timing, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        fire = next_fire(t, after)
        if fire is None:
            break
        out.append(fire)
        after = fire
    return out


def local_day(t: Timing, day: datetime) -> list[datetime]:
    """All fires on one local calendar day (`day` is local midnight)."""
    zone = ZoneInfo(t.timezone)
    start = day.replace(tzinfo=zone)
    end = (day + timedelta(days=1)).replace(tzinfo=zone)
    return fires_between(t, start - timedelta(microseconds=1), end - timedelta(microseconds=1), 500)


# --------------------------------------------------------------------------- cron basics


def test_cron_next_fires_in_utc():
    t = cron("*/15 * * * *")
    assert chain(t, utc(2026, 5, 1, 10, 7, 30), 3) == [
        utc(2026, 5, 1, 10, 15),
        utc(2026, 5, 1, 10, 30),
        utc(2026, 5, 1, 10, 45),
    ]
    # strictly after: a fire exactly at `after` is not returned, first_fire includes it
    assert next_fire(t, utc(2026, 5, 1, 10, 15)) == utc(2026, 5, 1, 10, 30)
    assert first_fire(t, utc(2026, 5, 1, 10, 15)) == utc(2026, 5, 1, 10, 15)
    assert first_fire(t, utc(2026, 5, 1, 10, 15, 0, 1)) == utc(2026, 5, 1, 10, 30)
    # any aware input zone is accepted; output is UTC
    fire = next_fire(t, datetime(2026, 5, 1, 12, 7, tzinfo=BERLIN))
    assert fire == utc(2026, 5, 1, 10, 15)
    assert fire.tzinfo is UTC


def test_cron_in_a_zone_follows_local_wall_time():
    t = cron("0 9 * * 1-5", "Europe/Berlin")  # weekdays 09:00 Berlin
    # Fri 2026-03-27 is CET (UTC+1); Mon 2026-03-30 is CEST (UTC+2)
    assert chain(t, utc(2026, 3, 27, 0, 0), 2) == [utc(2026, 3, 27, 8), utc(2026, 3, 30, 7)]
    t = cron("0 9 * * *", "America/New_York")
    assert next_fire(t, utc(2026, 1, 15)) == utc(2026, 1, 15, 14)  # EST, UTC-5
    assert next_fire(t, utc(2026, 7, 15)) == utc(2026, 7, 15, 13)  # EDT, UTC-4


DST_DAYS = [
    # zone, spring-forward day, UTC of 03:00 local that day, fall-back day, repeated hour
    ("Europe/Berlin", datetime(2026, 3, 29), utc(2026, 3, 29, 1), datetime(2026, 10, 25), 2),
    ("America/New_York", datetime(2026, 3, 8), utc(2026, 3, 8, 7), datetime(2026, 11, 1), 1),
]


@pytest.mark.parametrize(("zone", "spring", "three_am", "fall", "rep"), DST_DAYS)
def test_fixed_time_in_spring_gap_fires_once_at_gap_end(zone, spring, three_am, fall, rep):
    fires = local_day(cron("30 2 * * *", zone), spring)
    assert fires == [three_am]
    local = fires[0].astimezone(ZoneInfo(zone))
    assert (local.hour, local.minute) == (3, 0)
    # the next day is back to 02:30
    assert next_fire(cron("30 2 * * *", zone), fires[0]).astimezone(ZoneInfo(zone)).hour == 2


@pytest.mark.parametrize(("zone", "spring", "three_am", "fall", "rep"), DST_DAYS)
def test_fixed_time_on_fall_back_fires_once(zone, spring, three_am, fall, rep):
    z = ZoneInfo(zone)
    for hour in sorted({2, rep}):  # 02:30 everywhere, plus the zone's repeated hour
        fires = local_day(cron(f"30 {hour} * * *", zone), fall)
        assert len(fires) == 1, (zone, hour, fires)
        local = fires[0].astimezone(z)
        assert (local.hour, local.minute, local.fold) == (hour, 30, 0)
    # starting inside the second occurrence must not go back to the first one
    second = fall.replace(hour=rep, minute=15, fold=1, tzinfo=z)
    fire = next_fire(cron(f"30 {rep} * * *", zone), second)
    assert fire > second
    assert fire.astimezone(z).date() > fall.date()


@pytest.mark.parametrize(("zone", "spring", "three_am", "fall", "rep"), DST_DAYS)
def test_half_hourly_on_fall_back_fires_at_both_folds(zone, spring, three_am, fall, rep):
    z = ZoneInfo(zone)
    fires = local_day(cron("*/30 * * * *", zone), fall)
    assert len(fires) == 50  # a 25-hour day
    repeated = [f for f in fires if f.astimezone(z).hour == rep]
    local = [f.astimezone(z) for f in repeated]
    assert [(f.minute, f.fold) for f in local] == [(0, 0), (30, 0), (0, 1), (30, 1)]
    # same wall time, an hour apart in real time (compare in UTC: aware local maths ignores fold)
    assert repeated[2] - repeated[0] == timedelta(hours=1)


@pytest.mark.parametrize(("zone", "spring", "three_am", "fall", "rep"), DST_DAYS)
def test_hourly_around_transitions_is_strictly_increasing(zone, spring, three_am, fall, rep):
    t = cron("0 * * * *", zone)
    for day, hours in ((spring, 23), (fall, 25)):
        fires = local_day(t, day)
        assert len(fires) == hours
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fires))
        assert all(f.tzinfo is UTC for f in fires)


# --------------------------------------------------------------------------- interval and once


def test_interval_is_anchored_without_drift():
    anchor = datetime(2026, 1, 1, 0, 0, 0, 123457, tzinfo=BERLIN)
    t = every(7, anchor)
    fires = chain(t, anchor, 20_000)
    assert fires[0] == anchor + 7 * S
    assert fires[-1] == anchor + 20_000 * 7 * S
    assert all(f == anchor + (k + 1) * 7 * S for k, f in enumerate(fires))
    # from an arbitrary point, far away, the grid is the same
    after = utc(2031, 7, 9, 13, 14, 15, 999)
    fire = next_fire(t, after)
    k = (fire - anchor) / (7 * S)
    assert k == int(k)
    assert fire > after
    assert fire - 7 * S <= after
    # exactly on a grid point: strictly after goes to the next one, first_fire keeps it
    on_grid = anchor + 1_000_000 * 7 * S
    assert next_fire(t, on_grid) == on_grid + 7 * S
    assert first_fire(t, on_grid) == on_grid
    # before the anchor the grid extends backwards (k negative)
    assert next_fire(t, anchor - 10 * S) == anchor - 7 * S


def test_interval_start_and_end_bounds_filter_without_reanchoring():
    anchor = utc(2026, 1, 1)
    t = every(60, anchor, start_at=utc(2026, 1, 1, 0, 10, 30), end_at=utc(2026, 1, 1, 0, 13))
    assert next_fire(t, utc(2025, 1, 1)) == utc(2026, 1, 1, 0, 11)  # not 00:10:30
    assert fires_between(t, utc(2025, 1, 1), utc(2027, 1, 1), 100) == [
        utc(2026, 1, 1, 0, 11),
        utc(2026, 1, 1, 0, 12),
        utc(2026, 1, 1, 0, 13),  # end_at is inclusive
    ]
    assert next_fire(t, utc(2026, 1, 1, 0, 13)) is None
    assert count_fires(t, utc(2025, 1, 1), utc(2027, 1, 1)) == 3
    # start_at inclusive when it is on the grid
    t = every(60, anchor, start_at=utc(2026, 1, 1, 0, 10))
    assert first_fire(t, utc(2020, 1, 1)) == utc(2026, 1, 1, 0, 10)
    assert next_fire(t, utc(2026, 1, 1, 0, 9, 59)) == utc(2026, 1, 1, 0, 10)


def test_cron_bounds():
    t = cron("0 * * * *", start_at=utc(2026, 1, 1, 5), end_at=utc(2026, 1, 1, 7))
    assert fires_between(t, utc(2026, 1, 1), utc(2026, 1, 2), 100) == [
        utc(2026, 1, 1, 5),
        utc(2026, 1, 1, 6),
        utc(2026, 1, 1, 7),
    ]
    assert next_fire(t, utc(2026, 1, 1, 7)) is None
    assert count_fires(t, utc(2026, 1, 1), utc(2026, 1, 2)) == 3


def test_once_kind():
    run_at = datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN)
    t = Timing(kind="once", run_at=run_at)
    assert next_fire(t, utc(2026, 1, 1)) == utc(2026, 6, 1, 10)
    assert next_fire(t, run_at) is None
    assert first_fire(t, run_at) == run_at
    assert count_fires(t, utc(2026, 1, 1), run_at) == 1
    assert count_fires(t, run_at, utc(2027, 1, 1)) == 0
    assert fires_between(t, utc(2026, 1, 1), utc(2027, 1, 1), 10) == [run_at]
    outside = Timing(kind="once", run_at=run_at, end_at=run_at - S)
    assert next_fire(outside, utc(2026, 1, 1)) is None
    outside = Timing(kind="once", run_at=run_at, start_at=run_at + S)
    assert next_fire(outside, utc(2026, 1, 1)) is None


def test_fires_between_limit_and_empty_window():
    t = cron("* * * * *")
    assert len(fires_between(t, utc(2026, 1, 1), utc(2026, 1, 2), 5)) == 5
    assert fires_between(t, utc(2026, 1, 1), utc(2026, 1, 2), 0) == []
    assert fires_between(t, utc(2026, 1, 2), utc(2026, 1, 1), 5) == []
    assert count_fires(t, utc(2026, 1, 1), utc(2026, 1, 1, 1)) == 60


def test_timing_is_hashable_and_frozen():
    t = cron("0 * * * *", "Europe/Berlin")
    assert {t: 1}[cron("0 * * * *", "Europe/Berlin")] == 1
    with pytest.raises(AttributeError):
        t.cron = "1 * * * *"  # type: ignore[misc]


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("* 24 * * *", "Bad hour"),
        ("*/0 * * * *", "Bad minute"),
        ("0 0 30 2 *", "Bad day-of-month"),
    ],
)
def test_bad_cron_is_rejected_with_reason(expr, reason):
    with pytest.raises(TimingError, match="Invalid cron expression") as exc:
        validate_cron(expr)
    assert reason in str(exc.value)
    assert f"'{expr}'" in str(exc.value)
    with pytest.raises(TimingError, match="cron expression"):
        next_fire(cron(expr), utc(2026, 1, 1))


def test_validate_cron_normalises():
    assert validate_cron("  */5   *  * * mon-fri ") == "*/5 * * * mon-fri"
    with pytest.raises(TimingError):
        validate_cron(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "   ", "localtime", "Europe", "/etc/UTC"])
def test_unknown_zone_is_rejected(name):
    with pytest.raises(TimingError, match="Unknown time zone"):
        validate_timezone(name)
    with pytest.raises(TimingError, match="Unknown time zone"):
        check(cron("0 * * * *", name))


def test_known_zones_are_accepted():
    assert validate_timezone("Europe/Berlin") == BERLIN
    assert validate_timezone("UTC").key == "UTC"


@pytest.mark.parametrize("seconds", [0, -5])
def test_interval_must_be_positive(seconds):
    with pytest.raises(TimingError, match="interval_seconds must be greater than 0"):
        check(every(seconds, utc(2026, 1, 1)))


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        (Timing(kind="interval", interval_seconds=60), "needs an anchor"),
        (Timing(kind="once"), "needs a run_at"),
        (Timing(kind="cron"), "needs a cron expression"),
        (Timing(kind="weekly"), "Unknown schedule kind"),
        (every(60, datetime(2026, 1, 1)), "anchor must be timezone-aware"),
        (Timing(kind="once", run_at=datetime(2026, 1, 1)), "run_at must be timezone-aware"),
        (
            cron("0 * * * *", start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)),
            "end_at .* is before start_at",
        ),
        (every(1.5, utc(2026, 1, 1)), "whole number"),  # type: ignore[arg-type]
    ],
)
def test_check_names_the_problem(timing, message):
    with pytest.raises(TimingError, match=message):
        check(timing)


def test_naive_datetimes_are_rejected():
    t = cron("0 * * * *")
    with pytest.raises(TimingError, match="after must be timezone-aware"):
        next_fire(t, datetime(2026, 1, 1))
    with pytest.raises(TimingError, match="timezone-aware"):
        fires_between(t, utc(2026, 1, 1), datetime(2026, 1, 2), 10)
    with pytest.raises(TimingError, match="now must be timezone-aware"):
        plan_fires(t, utc(2026, 1, 1), datetime(2026, 1, 2), grace=S, policy="skip")
    with pytest.raises(TimingError, match="timezone-aware"):
        preview(t, datetime(2026, 1, 1))


def test_timing_error_is_a_value_error():
    assert issubclass(TimingError, ValueError)


# --------------------------------------------------------------------------- plan_fires

MINUTELY = every(60, utc(2026, 1, 1))
GRACE = timedelta(seconds=5)


def minute(m: int) -> datetime:
    return utc(2026, 1, 1, 10, m)


@pytest.mark.parametrize("policy", ["skip", "run_once", "run_all"])
def test_plan_on_time(policy):
    plan = plan_fires(
        MINUTELY, minute(0), minute(0) + timedelta(milliseconds=300), grace=GRACE, policy=policy
    )
    assert plan == FirePlan(run=[minute(0)], misfire=None, next_fire=minute(1))


def test_plan_not_yet_due():
    plan = plan_fires(MINUTELY, minute(5), minute(4), grace=GRACE, policy="run_once")
    assert plan == FirePlan(run=[], misfire=None, next_fire=minute(5))


def test_plan_run_once_coalesces_late_fires():
    now = minute(10) + timedelta(seconds=30)  # 10:00 .. 10:10 are all late
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="run_once")
    assert plan.run == [minute(10)]
    assert plan.misfire == Misfire(minute(0), minute(9), 10, "run_once")
    assert plan.next_fire == minute(11)


def test_plan_run_once_with_an_on_time_fire_runs_only_that():
    now = minute(10) + timedelta(seconds=2)  # 10:10 is on time
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="run_once")
    assert plan.run == [minute(10)]
    assert plan.misfire == Misfire(minute(0), minute(9), 10, "run_once")


def test_plan_run_once_single_late_fire_runs_without_misfire():
    plan = plan_fires(MINUTELY, minute(0), minute(0) + 30 * S, grace=GRACE, policy="run_once")
    assert plan.run == [minute(0)]
    assert plan.misfire is None


def test_plan_skip():
    now = minute(10) + timedelta(seconds=30)
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="skip")
    assert plan.run == []
    assert plan.misfire == Misfire(minute(0), minute(10), 11, "skip")
    assert plan.next_fire == minute(11)
    plan = plan_fires(MINUTELY, minute(0), minute(10) + S, grace=GRACE, policy="skip")
    assert plan.run == [minute(10)]
    assert plan.misfire == Misfire(minute(0), minute(9), 10, "skip")


def test_plan_run_all_within_limit():
    now = minute(10) + timedelta(seconds=30)
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="run_all")
    assert plan.run == [minute(m) for m in range(11)]
    assert plan.misfire is None


def test_plan_run_all_beyond_limit():
    now = minute(10) + timedelta(seconds=2)  # 10:10 on time, 10:00-10:09 late
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="run_all", run_all_limit=3)
    assert plan.run == [minute(7), minute(8), minute(9), minute(10)]
    assert plan.misfire == Misfire(minute(0), minute(6), 7, "run_all_limit")


def test_plan_grace_boundary_is_inclusive():
    plan = plan_fires(MINUTELY, minute(0), minute(0) + GRACE, grace=GRACE, policy="skip")
    assert plan.run == [minute(0)]
    assert plan.misfire is None
    now = minute(0) + GRACE + timedelta(microseconds=1)
    plan = plan_fires(MINUTELY, minute(0), now, grace=GRACE, policy="skip")
    assert plan.run == []
    assert plan.misfire == Misfire(minute(0), minute(0), 1, "skip")


def test_plan_day_outage_of_one_second_schedule_is_arithmetic():
    due = utc(2026, 1, 1)
    t = every(1, due)
    now = due + timedelta(days=1, microseconds=500_000)
    owed = 86_400 + 1  # due itself and every second up to and including due + 1 day
    plan = plan_fires(t, due, now, grace=timedelta(0), policy="run_once")
    assert plan.run == [due + timedelta(days=1)]
    assert plan.misfire == Misfire(due, due + timedelta(days=1) - S, owed - 1, "run_once")
    plan = plan_fires(t, due, now, grace=timedelta(0), policy="skip")
    assert plan.misfire.count == owed
    assert plan.run == []
    plan = plan_fires(t, due, now, grace=timedelta(0), policy="run_all", run_all_limit=100)
    assert len(plan.run) == 100
    assert plan.run[-1] == due + timedelta(days=1)
    assert plan.misfire.count == owed - 100
    assert plan.misfire.last == plan.run[0] - S
    assert plan.next_fire == due + timedelta(days=1, seconds=1)
    # a ten-year outage would take minutes if anything looped over the missed fires
    now = due + timedelta(days=3653)
    plan = plan_fires(t, due, now, grace=timedelta(0), policy="run_once")
    assert plan.misfire.count == 3653 * 86_400
    assert plan.run == [now]


def test_plan_respects_end_at():
    t = every(60, utc(2026, 1, 1), end_at=minute(5))
    plan = plan_fires(t, minute(0), minute(10) + 30 * S, grace=GRACE, policy="run_all")
    assert plan.run == [minute(m) for m in range(6)]
    assert plan.next_fire is None


def test_plan_for_cron_and_once():
    t = cron("*/5 * * * *")
    plan = plan_fires(t, minute(0), minute(21), grace=GRACE, policy="run_once")
    assert plan.run == [minute(20)]
    assert plan.misfire == Misfire(minute(0), minute(15), 4, "run_once")
    assert plan.next_fire == minute(25)
    once = Timing(kind="once", run_at=minute(0))
    plan = plan_fires(once, minute(0), minute(30), grace=GRACE, policy="skip")
    assert plan == FirePlan([], Misfire(minute(0), minute(0), 1, "skip"), None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "sometimes", "grace": GRACE}, "Unknown misfire policy"),
        ({"policy": "skip", "grace": -S}, "grace"),
        ({"policy": "run_all", "grace": GRACE, "run_all_limit": -1}, "run_all_limit"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs, message):
    with pytest.raises(TimingError, match=message):
        plan_fires(MINUTELY, minute(0), minute(1), **kwargs)


# --------------------------------------------------------------------------- preview


def notes(t: Timing, now: datetime, count: int) -> list[str]:
    return [p.note for p in preview(t, now, count)]


def test_preview_gap_notes_in_two_zones():
    got = preview(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), 2)
    assert got[0].at == utc(2026, 3, 29, 1)
    assert got[0].local == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert got[0].note == "DST gap: 02:30 does not exist on 2026-03-29, fires at 03:00 CEST"
    assert got[1].note == ""
    got = notes(cron("30 2 * * *", "America/New_York"), utc(2026, 3, 7, 12), 2)
    assert got == ["DST gap: 02:30 does not exist on 2026-03-08, fires at 03:00 EDT", ""]


def test_preview_no_gap_note_for_nominal_times_after_the_gap():
    # 03:00 is a real, nominal fire for these expressions, not a moved one
    assert notes(cron("0 3 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), 2) == ["", ""]
    got = preview(cron("*/30 * * * *", "Europe/Berlin"), utc(2026, 3, 29, 0, 15), 3)
    assert [p.local.strftime("%H:%M") for p in got] == ["01:30", "03:00", "03:30"]
    assert [p.note for p in got] == ["", "", ""]


def test_preview_repeat_notes_in_two_zones():
    assert notes(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2) == [
        "DST repeat: 02:30 occurs twice on 2026-10-25; fires at the first (CEST)",
        "",
    ]
    assert notes(cron("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), 2) == [
        "DST repeat: 01:30 occurs twice on 2026-11-01; fires at the first (EDT)",
        "",
    ]
    got = preview(cron("0 * * * *", "America/New_York"), utc(2026, 11, 1, 4), 4)
    assert [(p.local.hour, p.note) for p in got] == [
        (0, ""),
        (1, "DST repeat: 01:00 occurs twice on 2026-11-01; fires at the first (EDT)"),
        (1, "DST repeat: 01:00 occurs twice on 2026-11-01; fires at the second (EST)"),
        (2, ""),
    ]
    got = notes(cron("*/30 * * * *", "Europe/Berlin"), utc(2026, 10, 25, 0), 4)
    assert got[2] == "DST repeat: 02:00 occurs twice on 2026-10-25; fires at the second (CET)"


def test_preview_no_notes_in_utc():
    for expr, start in [
        ("30 2 * * *", utc(2026, 3, 27)),
        ("30 2 * * *", utc(2026, 10, 23)),
        ("*/30 * * * *", utc(2026, 10, 25)),
        ("0 * * * *", utc(2026, 11, 1)),
    ]:
        got = preview(cron(expr), start, 10)
        assert len(got) == 10
        assert all(p.note == "" for p in got)
        assert all(p.local.utcoffset() == timedelta(0) for p in got)


def test_preview_starts_at_now_inclusive_and_covers_other_kinds():
    got = preview(cron("0 * * * *"), utc(2026, 1, 1, 5), 3)
    assert [p.at for p in got] == [utc(2026, 1, 1, 5), utc(2026, 1, 1, 6), utc(2026, 1, 1, 7)]
    got = preview(every(3600, utc(2026, 1, 1), timezone="Europe/Berlin"), utc(2026, 1, 1), 2)
    assert [p.local for p in got] == [
        datetime(2026, 1, 1, 1, tzinfo=BERLIN),
        datetime(2026, 1, 1, 2, tzinfo=BERLIN),
    ]
    assert preview(Timing(kind="once", run_at=utc(2026, 1, 1)), utc(2026, 1, 2)) == []


# --------------------------------------------------------------------------- properties

CRONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "15,45 1-3 * * *",
    "0 2 * * *",
    "*/30 * * * *",
    "0 0 * * 0",
    "0 9 * * 1-5",
    "5 4 L * *",
    "0 12 1 * *",
    "59 23 31 12 *",
]
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # transitions at midnight
    "Asia/Kolkata",
    "Pacific/Chatham",
]
# instants near DST transitions, so random `after` values often straddle one
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),  # Lord Howe
    utc(2026, 4, 5, 3),  # Santiago
]

instants = st.one_of(
    st.datetimes(datetime(2020, 1, 1), datetime(2032, 1, 1), timezones=st.just(UTC)),
    st.builds(
        lambda base, s: base + timedelta(seconds=s),
        st.sampled_from(TRANSITIONS),
        st.integers(-4 * 3600, 4 * 3600),
    ),
)


@st.composite
def bounds(draw):
    start = draw(st.none() | instants)
    end = draw(st.none() | instants)
    if start is not None and end is not None and end < start:
        start, end = end, start
    return {"start_at": start, "end_at": end}


cron_timings = st.builds(
    lambda expr, zone, b: Timing(kind="cron", cron=expr, timezone=zone, **b),
    st.sampled_from(CRONS),
    st.sampled_from(ZONES),
    bounds(),
)
interval_timings = st.builds(
    lambda seconds, anchor, zone, b: Timing(
        kind="interval", interval_seconds=seconds, anchor=anchor, timezone=zone, **b
    ),
    st.one_of(st.integers(1, 120), st.integers(1, 10**6)),
    instants,
    st.sampled_from(ZONES),
    bounds(),
)

# database=None: property tests leave no example database in the working tree.
PROPS = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def in_bounds(t: Timing, fire: datetime) -> bool:
    return (t.start_at is None or fire >= t.start_at) and (t.end_at is None or fire <= t.end_at)


@PROPS
@given(st.one_of(cron_timings, interval_timings), instants)
def test_prop_chain_is_increasing_bounded_and_matches_fires_between(t, after):
    fires = chain(t, after, 15)
    assert all(f.tzinfo is UTC for f in fires)
    assert all(a < b for a, b in itertools.pairwise([after, *fires]))
    assert all(in_bounds(t, f) for f in fires)
    if fires:
        assert fires_between(t, after, fires[-1], 1000) == fires
        assert first_fire(t, fires[0]) == fires[0]
        assert first_fire(t, after + timedelta(microseconds=1)) == fires[0]
    if len(fires) < 15:  # the chain ended: there really is nothing after its end
        last = fires[-1] if fires else after
        assert next_fire(t, last) is None
    if t.kind == "interval":
        assert all(
            (f - t.anchor) % timedelta(seconds=t.interval_seconds) == timedelta(0) for f in fires
        )


@PROPS
@given(interval_timings, instants, st.integers(0, 400), st.integers(0, 10**6))
def test_prop_interval_count_matches_fires_between(t, after, steps, micros):
    until = after + steps * timedelta(seconds=t.interval_seconds) + timedelta(microseconds=micros)
    listed = fires_between(t, after, until, 10**6)
    assert count_fires(t, after, until) == len(listed)
    assert all(after < f <= until and in_bounds(t, f) for f in listed)


@PROPS
@given(cron_timings, instants, st.integers(0, 6 * 3600))
def test_prop_cron_count_matches_fires_between(t, after, seconds):
    until = after + timedelta(seconds=seconds)
    listed = fires_between(t, after, until, 10**6)
    assert count_fires(t, after, until) == len(listed)
    assert listed == sorted(set(listed))


@PROPS
@given(
    interval_timings,
    instants,
    st.integers(0, 10**6),
    st.integers(0, 3600),
    st.sampled_from(["skip", "run_once", "run_all"]),
    st.integers(0, 50),
)
def test_prop_plan_accounts_for_every_owed_fire(t, due0, span, grace_s, policy, limit):
    """Everything owed is either run or counted in the misfire, never both, never lost."""
    due = first_fire(t, due0)
    if due is None:
        return
    now = due + timedelta(seconds=span)
    plan = plan_fires(
        t, due, now, grace=timedelta(seconds=grace_s), policy=policy, run_all_limit=limit
    )
    owed = 1 + count_fires(t, due, now)
    missed = plan.misfire.count if plan.misfire else 0
    assert len(plan.run) + missed == owed
    assert plan.run == sorted(set(plan.run))
    assert all(due <= f <= now for f in plan.run)
    if plan.misfire and plan.run:
        assert plan.misfire.last < plan.run[0]
    assert plan.next_fire == next_fire(t, now)
