"""`manage.py runscheduler --cluster NAME [--node NAME]`: run one scheduler node."""

from __future__ import annotations

import logging
import math
import os
import sys

from django.conf import settings
from django.core.management.base import CommandError

from scheduler.management.commands._common import MAX_COUNT, OperatorCommand, whole_number
from scheduler.membership import MemberOptions, MemberRefused
from scheduler.node import Node, NodeSettings, default_node_name
from scheduler.validators import NAME_HELP, is_name, text_for_message


def _env(name: str, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _env_int(name: str) -> int:
    value = _env(name, "0")
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"{name}={value!r} is not a whole number.") from None
    if abs(number) > MAX_COUNT:
        raise CommandError(f"{name}={value!r} is not between {-MAX_COUNT} and {MAX_COUNT}.")
    return number


def _env_bool(name: str) -> bool:
    return str(_env(name, "")).lower() in ("1", "true", "yes", "on")


class Command(OperatorCommand):
    help = (
        "Run a scheduler node. Without cluster options it is a single node; --exclusive makes "
        "it a passive cluster's primary (with --backup a backup); --distributed-orders makes "
        "it a member of an active, load-balancing cluster. Each option has an OPSCENTER_* "
        "environment equivalent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cluster", default=_env("OPSCENTER_CLUSTER"),
                            help="Cluster name (env OPSCENTER_CLUSTER).")
        parser.add_argument("--node", default=_env("OPSCENTER_NODE"),
                            help="Node name, unique in the cluster (env OPSCENTER_NODE; "
                                 "default: the host name).")
        parser.add_argument("--workers", type=whole_number(10_000), default=None,
                            help="Worker pool size: tasks run at once (env OPSCENTER_WORKERS).")
        parser.add_argument("--exclusive", action="store_true",
                            default=_env_bool("OPSCENTER_EXCLUSIVE"),
                            help="Passive cluster: one active member, the others stand by.")
        parser.add_argument("--backup", action="store_true", default=_env_bool("OPSCENTER_BACKUP"),
                            help="With --exclusive: a backup that takes over when the active "
                                 "member dies.")
        parser.add_argument("--backup-precedence", type=whole_number(MAX_COUNT),
                            default=_env_int("OPSCENTER_BACKUP_PRECEDENCE"),
                            help="Backups take over lowest precedence first (ties by name).")
        parser.add_argument("--reclaim", action="store_true",
                            default=_env_bool("OPSCENTER_RECLAIM"),
                            help="A returning primary takes the lease back from a backup.")
        parser.add_argument("--distributed-orders", action="store_true",
                            default=_env_bool("OPSCENTER_DISTRIBUTED_ORDERS"),
                            help="Active cluster: every member fires, each fire once.")
        parser.add_argument("--label", action="append",
                            default=[x for x in str(_env("OPSCENTER_LABELS", "")).split(",") if x],
                            help="A label for job affinity (repeatable; env OPSCENTER_LABELS, "
                                 "comma-separated).")
        parser.add_argument("--heartbeat-interval", type=float, default=None,
                            help="Seconds between heartbeats (env OPSCENTER_HEARTBEAT_INTERVAL, "
                                 "default 1).")
        parser.add_argument("--dead-after", type=float, default=None,
                            help="A member without heartbeat for this long is dead "
                                 "(env OPSCENTER_DEAD_AFTER, default 5).")
        parser.add_argument("--takeover-stagger", type=float, default=None,
                            help="Extra wait per backup rank before taking over "
                                 "(env OPSCENTER_TAKEOVER_STAGGER, default 1).")
        parser.add_argument("--stop-grace", type=float, default=None,
                            help="On SIGTERM, seconds running tasks may finish before they are "
                                 "stopped (env OPSCENTER_STOP_GRACE, default 30).")

    def handle(self, *args, **opts):
        cluster = opts["cluster"]
        if not cluster:
            raise CommandError("--cluster NAME is required (or set OPSCENTER_CLUSTER).")
        node = opts["node"] or default_node_name()
        for what, value in (("cluster", cluster), ("node", node)):
            if not is_name(value):
                raise CommandError(f"--{what} {text_for_message(value)!r} is not a valid name: "
                                   f"{NAME_HELP}")
        for label in opts["label"]:
            if not is_name(label):
                raise CommandError(f"--label {text_for_message(label)!r} is not a valid label: "
                                   f"{NAME_HELP}")
        if opts["backup"] and not opts["exclusive"]:
            raise CommandError("--backup needs --exclusive (a backup of a passive cluster).")
        if opts["distributed_orders"] and opts["backup"]:
            raise CommandError("--backup and --distributed-orders do not go together: an active "
                               "cluster has no backups, every member is active.")
        if opts["reclaim"] and (opts["backup"] or not opts["exclusive"]):
            raise CommandError("--reclaim is for the primary of a passive cluster "
                               "(--exclusive without --backup).")
        conf = NodeSettings.from_django(
            heartbeat_interval=opts["heartbeat_interval"], dead_after=opts["dead_after"],
            takeover_stagger=opts["takeover_stagger"], stop_grace=opts["stop_grace"],
        )
        workers = opts["workers"] if opts["workers"] is not None else settings.OPSCENTER["WORKERS"]
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        for name in ("heartbeat_interval", "dead_after", "takeover_stagger", "stop_grace"):
            if not math.isfinite(getattr(conf, name)):
                raise CommandError(f"--{name.replace('_', '-')} must be a finite number of "
                                   "seconds.")
        if conf.heartbeat_interval <= 0 or conf.dead_after <= conf.heartbeat_interval:
            raise CommandError("--dead-after must be longer than --heartbeat-interval, and both "
                               "positive.")
        if conf.takeover_stagger < 0 or conf.stop_grace < 0:
            raise CommandError("--takeover-stagger and --stop-grace cannot be negative.")
        if opts["distributed_orders"]:
            mode, role = "active", ""
        elif opts["exclusive"]:
            mode, role = "passive", "backup" if opts["backup"] else "primary"
        else:
            mode, role = "single", ""
        member_opts = MemberOptions(
            cluster=cluster, name=node, mode=mode, role=role,
            backup_precedence=opts["backup_precedence"], reclaim=opts["reclaim"],
            labels=tuple(opts["label"]), workers=workers,
        )
        logging.getLogger("opscenter").setLevel(logging.INFO)
        runner = Node(member_opts, conf)
        runner.install_signal_handlers()
        try:
            runner.start()
        except MemberRefused as exc:
            raise CommandError(f"refused to start: {exc}") from None
        self.stdout.write(f"node {node} running in cluster {cluster} ({mode}"
                          f"{', ' + role if role else ''}, {workers} workers); "
                          "SIGTERM or Ctrl-C stops it")
        try:
            runner.run()
        except MemberRefused as exc:
            # Declared dead while away, and meanwhile another process took this name.
            raise CommandError(f"stopped: could not join again: {exc}") from None
        if runner.running:
            # A python job ignored its cancel: its thread cannot be stopped, and the
            # interpreter would wait for it for ever. The stop is recorded; leave now.
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
