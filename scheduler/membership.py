"""Cluster membership: register a member, heartbeat, declare others dead, and the passive
cluster's lease (take it, keep it, hand it over). All times are the database's.

On PostgreSQL each member holds a session advisory lock named by its id on its main
connection: when a member's process dies the server drops the lock at once, which the
others see in pg_locks, so a crash is detected in well under a second. A hung member keeps
its connection (and lock), so the heartbeat and the lease on the database clock still cover it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from scheduler import __version__, eventlog
from scheduler.clock import db_now
from scheduler.db import is_pg as _is_pg
from scheduler.eventlog import Actor
from scheduler.models import Cluster, Member

log = logging.getLogger("opscenter.membership")

# First key of the two-key advisory lock: "opsc" as an int, so our locks are easy to spot.
ADVISORY_NAMESPACE = 0x6F707363


class MemberRefused(Exception):
    """This process may not join the cluster; the message says why."""


@dataclass(frozen=True)
class MemberOptions:
    cluster: str
    name: str
    mode: str                   # single | passive | active
    role: str = ""              # passive: primary | backup
    backup_precedence: int = 0
    reclaim: bool = False
    labels: tuple[str, ...] = ()
    workers: int = 100


def host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""


def acquire_member_lock(member_id: int) -> None:
    """Take this member's advisory lock. Never waits: after a reconnect the server may not yet
    have ended the old session; that is reported as a connection problem and tried again."""
    if _is_pg():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_NAMESPACE, member_id])
            if not cursor.fetchone()[0]:
                raise OperationalError("this member's advisory lock is still held by its "
                                       "previous database session")


def _members_without_lock(cluster_id: int, exclude_id: int | None) -> set[int]:
    """Live members whose advisory lock is gone: their process or connection has died."""
    if not _is_pg():
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.id FROM scheduler_member m WHERE m.cluster_id = %s "
            "AND m.state IN ('active', 'standby', 'stopping') AND m.id <> %s "
            "AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s AND l.objid::bigint = m.id AND l.objsubid = 2 AND l.granted)",
            [cluster_id, exclude_id or 0, ADVISORY_NAMESPACE],
        )
        return {row[0] for row in cursor.fetchall()}


def register(opts: MemberOptions, dead_after: float,
             heartbeat_interval: float | None = None) -> Member:
    """Create this process's member row, or refuse with a message that says why."""
    for _ in range(3):
        try:
            with transaction.atomic():
                cluster, _ = Cluster.objects.get_or_create(name=opts.cluster)
            break
        except IntegrityError:
            continue  # another member created it at the same moment
    with transaction.atomic():
        cluster = Cluster.objects.select_for_update().get(pk=cluster.pk)
        # Members that stopped heartbeating (or whose lock is gone) are dead, not rivals.
        declare_dead(cluster.pk, None, f"starting member {opts.name}", dead_after)
        live = list(cluster.live_members())
        for m in live:
            if m.name == opts.name and _gone_from_this_host(m):
                _declare_gone(m, opts.name)
        live = list(cluster.live_members())
        same_name = [m for m in live if m.name == opts.name]
        if same_name:
            m = same_name[0]
            age = (db_now() - m.heartbeat_at).total_seconds()
            raise MemberRefused(
                f"a live member named '{opts.name}' is already in cluster '{opts.cluster}' "
                f"(host {m.host}, pid {m.pid}, last heartbeat {age:.1f} s ago); give this node "
                "another name with --node, or stop the other one first"
            )
        if live:
            modes = {m.mode for m in live}
            if modes != {opts.mode}:
                others = ", ".join(f"{m.name} ({m.mode})" for m in live)
                raise MemberRefused(
                    f"cluster '{opts.cluster}' runs as a {'/'.join(sorted(modes))} cluster "
                    f"(live members: {others}); this member was started as {opts.mode}. "
                    + _mode_hint(next(iter(modes)))
                )
            if opts.mode == Cluster.Mode.SINGLE:
                raise MemberRefused(
                    f"cluster '{opts.cluster}' already has a live member ({live[0].name}); a "
                    "single-node scheduler does not share its cluster. Start every member with "
                    "--exclusive [--backup] for fail-over or --distributed-orders for load "
                    "balancing."
                )
        if cluster.mode != opts.mode:
            Cluster.objects.filter(pk=cluster.pk).update(mode=opts.mode)
        member = Member.objects.create(
            cluster=cluster,
            name=opts.name,
            mode=opts.mode,
            role=opts.role,
            backup_precedence=opts.backup_precedence,
            reclaim=opts.reclaim,
            labels=list(opts.labels),
            workers=opts.workers,
            dead_after=dead_after,
            **({"heartbeat_interval": heartbeat_interval} if heartbeat_interval else {}),
            host=socket.gethostname(),
            ip=host_ip(),
            pid=os.getpid(),
            version=__version__,
            state=(Member.State.STANDBY if opts.mode == Cluster.Mode.PASSIVE
                   else Member.State.ACTIVE),
        )
        # Taken before the row is visible to others, so no one sees a live member without it.
        acquire_member_lock(member.pk)
        eventlog.member_joined(member)
    member.refresh_from_db()
    return member


def _process_started(pid: int) -> float | None:
    """When the process started (epoch seconds, from /proc), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        # Field 22 (after the command name, which may hold spaces, in parentheses).
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _gone_from_this_host(member: Member) -> bool:
    """Is this live member, recorded on this host, a process that is no longer there? Its
    heartbeat would take dead_after to go stale (and SQLite has no session lock to tell), but
    a successor on the same host can look at the process table: no process with that PID, or
    one that is not a scheduler node or that started after the member joined (a reused PID).
    Anything uncertain (no /proc, another host) keeps the member live."""
    if member.host != socket.gethostname() or not Path("/proc/self").exists():
        return False
    if member.pid == os.getpid():
        return True  # this process holds its PID now: the member's process has ended
    try:
        cmdline = Path(f"/proc/{member.pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if b"runscheduler" not in cmdline:
        return True
    started = _process_started(member.pid)
    # The member row is written after its process started; a process that started later
    # (on this host's clock, the member's recorded skew taken into account) is another one.
    joined = member.started_at.timestamp() + member.clock_skew_ms / 1000
    return started is not None and started > joined + 1.0


def _declare_gone(member: Member, successor: str) -> None:
    reason = f"process {member.pid} on {member.host} is gone"
    changed = Member.objects.filter(pk=member.pk, state__in=Member.LIVE_STATES).update(
        state=Member.State.DEAD, stopped_at=Now(), stop_reason=reason[:200],
        declared_dead_by=f"starting member {successor}"[:100],
    )
    if changed:
        eventlog.member_gone(member, successor)
        log.warning("member %s (pid %d) on this host is gone: declared dead", member.name,
                    member.pid)


def _mode_hint(mode: str) -> str:
    return {
        "passive": "Start it with --exclusive (primary) or --exclusive --backup.",
        "active": "Start it with --distributed-orders.",
        "single": "Start it without cluster options, or stop the running member first.",
    }[mode]


def heartbeat(member_id: int, running: int, skew_ms: int) -> bool:
    """Record that this member is alive. False when it was declared dead meanwhile."""
    return Member.objects.filter(pk=member_id, state__in=Member.LIVE_STATES).update(
        heartbeat_at=Now(), running_tasks=running, clock_skew_ms=skew_ms
    ) == 1


def declare_dead(cluster_id: int, me: Member | None, by: str, dead_after: float,
                 check_locks: bool = False, lock_grace: float = 1.0) -> list[Member]:
    """Declare dead the live members whose heartbeat is older than `dead_after` (and, with
    `check_locks` on PostgreSQL, those whose advisory lock is gone and whose last heartbeat is
    older than `lock_grace`, so a member reconnecting after a blip is not killed at once)."""
    now = db_now()
    stale = Q(heartbeat_at__lt=now - timedelta(seconds=dead_after))
    reason = {}
    candidates = set(
        Member.objects.filter(cluster_id=cluster_id, state__in=Member.LIVE_STATES)
        .exclude(pk=getattr(me, "pk", None)).filter(stale).values_list("pk", flat=True)
    )
    for pk in candidates:
        reason[pk] = f"no heartbeat for {dead_after:g} s"
    if check_locks or me is None:
        gone = _members_without_lock(cluster_id, getattr(me, "pk", None))
        if gone:
            silent = set(
                Member.objects.filter(pk__in=gone,
                                      heartbeat_at__lt=now - timedelta(seconds=lock_grace))
                .values_list("pk", flat=True)
            )
            for pk in silent - candidates:
                reason[pk] = "its database session ended (process or host gone)"
            candidates |= silent
    dead = []
    for pk in sorted(candidates):
        # Still stale at the moment of the update: a heartbeat that landed since the look
        # above saves the member.
        grace = dead_after if reason[pk].startswith("no heartbeat") else lock_grace
        changed = Member.objects.filter(
            pk=pk, state__in=Member.LIVE_STATES,
            heartbeat_at__lt=Now() - timedelta(seconds=grace),
        ).update(
            state=Member.State.DEAD, stopped_at=Now(), stop_reason=reason[pk][:200],
            declared_dead_by=by[:100],
        )
        if changed:
            member = Member.objects.get(pk=pk)
            dead.append(member)
            eventlog.member_dead(member, by, reason[pk])
            log.warning("member %s declared dead: %s", member.name, reason[pk])
    return dead


def mark_stopped(member: Member, reason: str) -> None:
    """Record a stop. Tasks still running (a job that ignored its cancel) end lost, with a
    recovery queued when their job asks for it, so nothing stays `running` for ever."""
    from scheduler.ledger import lose_member_tasks

    with transaction.atomic():
        lose_member_tasks(member.cluster_id, member.pk, by=member.name,
                          why=f"member {member.name} stopped before the task ended")
        changed = Member.objects.filter(pk=member.pk, state__in=Member.LIVE_STATES).update(
            state=Member.State.STOPPED, stopped_at=Now(), stop_reason=reason[:200],
            running_tasks=0,
        )
        if changed:
            # The lease is not handed on: a normal stop of the active member does not fail
            # over (the primary takes it back when it returns; an operator can switch over).
            Cluster.objects.filter(pk=member.cluster_id, lease_holder=member).update(
                lease_expires_at=Now()
            )
            eventlog.member_stopped(member, reason)


def set_state(member: Member, state: str) -> bool:
    """Move a live member to `state`. True if it changed (the caller records why)."""
    changed = Member.objects.filter(pk=member.pk, state__in=Member.LIVE_STATES).exclude(
        state=state).update(state=state)
    if changed:
        member.state = state
    return bool(changed)


# ---------------------------------------------------------------- the passive cluster's lease


@dataclass
class LeaseView:
    holder_id: int | None
    epoch: int
    expires_at: object
    handover_to_id: int | None


def _lease_view(cluster_id: int) -> LeaseView:
    row = Cluster.objects.filter(pk=cluster_id).values(
        "lease_holder_id", "lease_epoch", "lease_expires_at", "handover_to_id").get()
    return LeaseView(row["lease_holder_id"], row["lease_epoch"], row["lease_expires_at"],
                     row["handover_to_id"])


def renew_lease(member: Member, epoch: int, ttl: float) -> bool:
    return Cluster.objects.filter(
        pk=member.cluster_id, lease_holder=member, lease_epoch=epoch
    ).update(lease_expires_at=Now() + timedelta(seconds=ttl)) == 1


def _take(member: Member, observed_epoch: int, ttl: float, why: str) -> int | None:
    with transaction.atomic():
        changed = Cluster.objects.filter(pk=member.cluster_id, lease_epoch=observed_epoch).update(
            lease_holder=member, lease_epoch=F("lease_epoch") + 1,
            lease_expires_at=Now() + timedelta(seconds=ttl), handover_to=None,
        )
        if not changed:
            return None
        epoch = observed_epoch + 1
        # Only a live member becomes active: one declared dead meanwhile must join again.
        if not Member.objects.filter(pk=member.pk, state__in=Member.LIVE_STATES).update(
                state=Member.State.ACTIVE):
            transaction.set_rollback(True)
            return None
        member.state = Member.State.ACTIVE
        eventlog.lease_taken(member, epoch, why)
    log.warning("member %s took the lease (epoch %d): %s", member.name, epoch, why)
    return epoch


def _rank(member: Member, candidates: list[Member]) -> int:
    """Takeover order: the primary first, then backups by precedence, ties by name."""
    order = sorted(candidates, key=lambda m: (m.role != "primary", m.backup_precedence, m.name))
    return [m.pk for m in order].index(member.pk)


def seek_lease(member: Member, ttl: float, dead_after: float, stagger: float) -> int | None:
    """A standby member's look at the lease. Returns the new epoch if it became active."""
    view = _lease_view(member.cluster_id)
    now = db_now()
    if view.holder_id == member.pk:
        # Handed to us (switch-over): the epoch was bumped by the one who handed it over.
        if view.expires_at and view.expires_at > now:
            if not Member.objects.filter(pk=member.pk, state__in=Member.LIVE_STATES).update(
                    state=Member.State.ACTIVE):
                return None
            member.state = Member.State.ACTIVE
            eventlog.member_active(member, view.epoch)
            return view.epoch
        return _take(member, view.epoch, ttl, "its own expired lease")
    holder = Member.objects.filter(pk=view.holder_id).first() if view.holder_id else None
    standbys = list(Member.objects.filter(cluster_id=member.cluster_id,
                                          state=Member.State.STANDBY))
    primary = member.role == Member.Role.PRIMARY
    if holder is None:
        if primary:
            return _take(member, view.epoch, ttl, "no member held the lease")
        if any(m.role == Member.Role.PRIMARY for m in standbys):
            return None  # the primary is there and will take it
        waited = (now - member.started_at).total_seconds()
        if waited >= dead_after + _rank(member, standbys) * stagger:
            return _take(member, view.epoch, ttl, f"no primary appeared within {waited:.1f} s")
        return None
    if holder.state == Member.State.STOPPED:
        # A normal stop does not fail over; the primary returning takes the lease back, and
        # an operator's switch-over hands it to the member named.
        if view.handover_to_id == member.pk:
            return _take(member, view.epoch, ttl, f"switch-over after {holder.name} stopped")
        if primary:
            return _take(member, view.epoch, ttl,
                         f"the previous active member {holder.name} had stopped normally")
        return None
    if holder.is_live:
        expired = view.expires_at is None or view.expires_at <= now
        if not expired:
            if primary and member.reclaim and holder.role == Member.Role.BACKUP \
                    and view.handover_to_id is None:
                Cluster.objects.filter(pk=member.cluster_id, lease_epoch=view.epoch,
                                       handover_to__isnull=True).update(handover_to=member)
                eventlog.lease_reclaimed(member, holder)
            return None
        since = view.expires_at or now
    else:
        since = holder.stopped_at or now  # dead: declared at this time
    rank = _rank(member, standbys)
    if (now - since).total_seconds() >= rank * stagger:
        how = "unresponsive (lease expired)" if holder.is_live else "dead"
        return _take(member, view.epoch, ttl, f"the active member {holder.name} is {how}")
    return None


def hand_over_if_asked(member: Member, epoch: int, ttl: float) -> bool:
    """The active member's side of a switch-over. True if it handed the lease on."""
    view = _lease_view(member.cluster_id)
    if view.handover_to_id is None or view.epoch != epoch or view.holder_id != member.pk:
        return False
    target = Member.objects.filter(pk=view.handover_to_id).first()
    if target is None or target.state != Member.State.STANDBY or target.pk == member.pk:
        Cluster.objects.filter(pk=member.cluster_id).update(handover_to=None)
        log.warning("switch-over refused: the target is not a live standby member")
        return False
    with transaction.atomic():
        changed = Cluster.objects.filter(pk=member.cluster_id, lease_epoch=epoch,
                                         lease_holder=member).update(
            lease_holder=target, lease_epoch=F("lease_epoch") + 1,
            lease_expires_at=Now() + timedelta(seconds=ttl), handover_to=None,
        )
        if not changed:
            return False
        Member.objects.filter(pk=member.pk, state=Member.State.ACTIVE).update(
            state=Member.State.STANDBY)
        member.state = Member.State.STANDBY
        eventlog.lease_handover(member, target, epoch + 1)
    return True


def request_switchover(cluster_name: str, to: str | None, actor: Actor | str) -> Member:
    """An operator's switch-over: hand the lease to a named standby member (default: the
    primary). Refused with a clear message when that is not possible."""
    cluster = Cluster.objects.filter(name=cluster_name).first()
    if cluster is None:
        raise MemberRefused(f"there is no cluster named '{cluster_name}'")
    if cluster.mode != Cluster.Mode.PASSIVE:
        raise MemberRefused(f"cluster '{cluster_name}' is not a passive cluster")
    standbys = cluster.members.filter(state=Member.State.STANDBY)
    if to:
        target = standbys.filter(name=to).first()
        if target is None:
            names = ", ".join(standbys.values_list("name", flat=True)) or "none"
            raise MemberRefused(f"'{to}' is not a live standby member of '{cluster_name}' "
                                f"(standby members: {names})")
    else:
        target = standbys.filter(role=Member.Role.PRIMARY).first()
        if target is None:
            raise MemberRefused(f"the primary of '{cluster_name}' is not a live standby member")
    with transaction.atomic():
        Cluster.objects.filter(pk=cluster.pk).update(handover_to=target)
        eventlog.switchover_requested(cluster.pk, target, actor)
    from scheduler.wakeup import notify_nodes

    notify_nodes(cluster.pk)
    return target
