"""`manage.py runscheduler --cluster NAME [--node NAME]`: run one scheduler node."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from django.conf import settings
from django.core.management.base import CommandError

from scheduler.limits import BOUNDS, env_name, parse_bool
from scheduler.management.commands._common import OperatorCommand
from scheduler.membership import MemberOptions, MemberRefused
from scheduler.node import Node, NodeSettings, default_node_name
from scheduler.validators import NAME_HELP, is_name, text_for_message


def _env(name: str, default=None):
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _env_number(key: str, default):
    """OPSCENTER_<KEY> for an option's default, within the option's bounds."""
    name = env_name(key)
    value = _env(name)
    if value is None:
        return default
    try:
        return BOUNDS[key].parse(value)
    except ValueError as exc:
        raise CommandError(f"{name}={value!r} {exc}.") from None


def _bounded(key: str):
    """An argparse type: the option's value within its bounds, or a message saying which."""
    def parse(text: str):
        try:
            return BOUNDS[key].parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None

    return parse


def _switch(opts, option: str, name: str) -> bool:
    """A flag given as an option, or else by its environment variable (read here, in handle(),
    so that a bad value is a CommandError, not a traceback while the parser is built)."""
    if opts[option]:
        return True
    value = _env(name)
    if value is None:
        return False
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise CommandError(f"{name}={value!r} {exc}.") from None


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
        parser.add_argument("--workers", type=_bounded("workers"), default=None,
                            help="Worker pool size: tasks run at once (env OPSCENTER_WORKERS).")
        parser.add_argument("--exclusive", action="store_true",
                            help="Passive cluster: one active member, the others stand by.")
        parser.add_argument("--backup", action="store_true",
                            help="With --exclusive: a backup that takes over when the active "
                                 "member dies.")
        parser.add_argument("--backup-precedence", type=_bounded("backup_precedence"),
                            default=None,
                            help="Backups take over lowest precedence first (ties by name).")
        parser.add_argument("--reclaim", action="store_true",
                            help="A returning primary takes the lease back from a backup.")
        parser.add_argument("--distributed-orders", action="store_true",
                            help="Active cluster: every member fires, each fire once.")
        parser.add_argument("--label", action="append",
                            default=[x for x in str(_env("OPSCENTER_LABELS", "")).split(",") if x],
                            help="A label for job affinity (repeatable; env OPSCENTER_LABELS, "
                                 "comma-separated).")
        parser.add_argument("--heartbeat-interval", type=_bounded("heartbeat_interval"),
                            default=None,
                            help="Seconds between heartbeats (env OPSCENTER_HEARTBEAT_INTERVAL, "
                                 "default 1).")
        parser.add_argument("--dead-after", type=_bounded("dead_after"), default=None,
                            help="A member without heartbeat for this long is dead "
                                 "(env OPSCENTER_DEAD_AFTER, default 5).")
        parser.add_argument("--takeover-stagger", type=_bounded("takeover_stagger"), default=None,
                            help="Extra wait per backup rank before taking over "
                                 "(env OPSCENTER_TAKEOVER_STAGGER, default 1).")
        parser.add_argument("--stop-grace", type=_bounded("stop_grace"), default=None,
                            help="On SIGTERM, seconds running tasks may finish before they are "
                                 "stopped (env OPSCENTER_STOP_GRACE, default 30).")
        parser.add_argument("--metrics-port", type=_bounded("metrics_port"), default=None,
                            help="Serve this member's Prometheus metrics on this port at "
                                 "/metrics (env OPSCENTER_METRICS_PORT; default 0: off).")
        parser.add_argument("--metrics-host", default=_env("OPSCENTER_METRICS_HOST", "127.0.0.1"),
                            help="Address the metrics port listens on (env "
                                 "OPSCENTER_METRICS_HOST, default 127.0.0.1; 0.0.0.0 for all).")

    def handle(self, *args, **opts):
        for option in ("exclusive", "backup", "reclaim", "distributed_orders"):
            opts[option] = _switch(opts, option, env_name(option))
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
        try:
            conf = NodeSettings.from_django(
                heartbeat_interval=opts["heartbeat_interval"], dead_after=opts["dead_after"],
                takeover_stagger=opts["takeover_stagger"], stop_grace=opts["stop_grace"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        workers = opts["workers"] if opts["workers"] is not None else settings.OPSCENTER["WORKERS"]
        precedence = opts["backup_precedence"]
        if precedence is None:
            precedence = _env_number("backup_precedence", 0)
        if opts["distributed_orders"]:
            mode, role = "active", ""
        elif opts["exclusive"]:
            mode, role = "passive", "backup" if opts["backup"] else "primary"
        else:
            mode, role = "single", ""
        member_opts = MemberOptions(
            cluster=cluster, name=node, mode=mode, role=role,
            backup_precedence=precedence, reclaim=opts["reclaim"],
            labels=tuple(opts["label"]), workers=workers,
        )
        logging.getLogger("opscenter").setLevel(logging.INFO)
        port = opts["metrics_port"]
        if port is None:
            port = _env_number("metrics_port", 0)
        if port:
            self._serve_metrics(port, opts["metrics_host"])
        runner = Node(member_opts, conf)
        runner.install_signal_handlers()
        runner.start_reaper()
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

    def _serve_metrics(self, port: int, host: str) -> None:
        """Before the member joins: a port that is taken ends the command at once (status 2),
        so a supervisor's restart loop or the operator sees it, rather than a member that runs
        on unwatched while its scrape target silently reports down."""
        from scheduler.ops import member_metrics

        try:
            member_metrics.serve(port, host)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot serve metrics on {host}:{port}: "
                               f"{exc.strerror if isinstance(exc, OSError) else exc}",
                               returncode=2) from None
        logging.getLogger("opscenter.node").info("metrics on http://%s:%d/metrics", host, port)
