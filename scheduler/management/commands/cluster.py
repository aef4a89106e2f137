"""`manage.py cluster --cluster C`: the members of a cluster and who holds the lease."""

from __future__ import annotations

from scheduler.clock import db_now
from scheduler.management.commands._common import (
    OperatorCommand,
    add_cluster_argument,
    fmt_time,
    get_cluster,
    print_table,
)
from scheduler.models import Member

RECENT_STOPPED = 5


class Command(OperatorCommand):
    help = ("Show a cluster: its mode, the lease holder and epoch (passive clusters), its live "
            "members with state, role and heartbeat age, and the members that stopped lately.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("--all", action="store_true",
                            help="Every member row ever (each restart is a new row).")

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        now = db_now()  # ages on the database's clock, as the members judge each other
        write = self.stdout.write
        write(f"cluster {cluster.name}: mode {cluster.mode or '(no member started yet)'}")
        if cluster.mode == "passive":
            holder = cluster.lease_holder
            if holder is None:
                write("  lease: nobody holds it")
            else:
                left = (cluster.lease_expires_at - now).total_seconds() \
                    if cluster.lease_expires_at else 0.0
                expiry = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
                write(f"  lease: held by {holder.name} ({holder.state}), epoch "
                      f"{cluster.lease_epoch}, {expiry}")
            if cluster.handover_to_id:
                write(f"  switch-over to {cluster.handover_to.name} requested")
        members = Member.objects.filter(cluster=cluster)
        live = list(members.filter(state__in=Member.LIVE_STATES).order_by("name"))
        others = members.exclude(state__in=Member.LIVE_STATES).order_by("-stopped_at", "-id")
        others = list(others if options["all"] else others[:RECENT_STOPPED])
        headers = ["member", "state", "role", "prec", "host", "pid", "heartbeat", "running",
                   "skew ms", "version", "started"]

        def row(m: Member) -> list:
            age = (now - m.heartbeat_at).total_seconds()
            lease = " *" if m.pk == cluster.lease_holder_id else ""
            return [m.name + lease, m.state, m.role or "-", m.backup_precedence, m.host, m.pid,
                    f"{age:.1f} s ago", m.running_tasks, m.clock_skew_ms, m.version,
                    fmt_time(m.started_at)]

        write("")
        if live:
            print_table(write, headers, [row(m) for m in live])
            if cluster.mode == "passive":
                write("(* holds the lease)")
        else:
            write("no live members")
        if others:
            write("")
            write("stopped or dead:" if options["all"] else "recently stopped or dead:")
            print_table(write, ["member", "state", "host", "pid", "stopped", "reason"],
                        [[m.name, m.state, m.host, m.pid, fmt_time(m.stopped_at),
                          m.stop_reason or "-"] for m in others])
