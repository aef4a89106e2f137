"""The allowed range of every number a node is configured with, one rule for every door: the
environment (scheduler/env.py, read by the settings), the options of `runscheduler` and
NodeSettings itself.

No Django imports: the settings module reads it before Django is set up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    unit: str
    whole: bool = False  # a whole number (counts, bytes, days), not seconds

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} from {_plain(self.low)} to {_plain(self.high)} {self.unit}".rstrip()

    def parse(self, text: str) -> float | int:
        """The value of `text`, or ValueError saying what is wrong and what is allowed."""
        text = str(text).strip()
        try:
            value: float | int = int(text) if self.whole else float(text)
        except ValueError:
            raise ValueError(f"is not {self.describe()}") from None
        self.check(value)
        return value

    def check(self, value: float | int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"is not {self.describe()}")
        if self.whole and not isinstance(value, int):
            raise ValueError(f"is not {self.describe()}")
        if not math.isfinite(value):
            raise ValueError(f"is not finite: allowed is {self.describe()}")
        if not self.low <= value <= self.high:
            # A retention of -1 day would prune all history; 10**12 days overflows a date.
            raise ValueError(f"is out of range: allowed is {self.describe()}")


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


# Seconds: finite and positive where a loop waits on them; a member must heartbeat more often
# than it is declared dead (NodeSettings checks that pair).
BOUNDS: dict[str, Bound] = {
    "heartbeat_interval": Bound(0.05, 60, "seconds"),
    "dead_after": Bound(0.1, 3600, "seconds"),
    "takeover_stagger": Bound(0, 3600, "seconds"),
    "stop_grace": Bound(0, 86400, "seconds"),
    "workers": Bound(1, 10_000, "tasks", whole=True),
    "backup_precedence": Bound(0, 1_000_000, "", whole=True),
    "log_limit_bytes": Bound(1_000, 1_000_000_000, "bytes", whole=True),
    "task_retention_days": Bound(1, 36_500, "days", whole=True),
    "event_retention_days": Bound(1, 36_500, "days", whole=True),
    # 0: no metrics server (the default); else the member's own /metrics port.
    "metrics_port": Bound(0, 65_535, "", whole=True),
    # executor celery (executors/celery_executor.py): the worker's lease on a task, and how
    # long a sent task may wait for a worker to take it.
    "celery_lease_timeout": Bound(2, 3600, "seconds"),
    "celery_start_timeout": Bound(1, 86_400, "seconds"),
}

# The same setting at its two doors, for messages that name both.
OPTIONS = {
    "heartbeat_interval": "--heartbeat-interval",
    "dead_after": "--dead-after",
    "takeover_stagger": "--takeover-stagger",
    "stop_grace": "--stop-grace",
    "workers": "--workers",
    "backup_precedence": "--backup-precedence",
    "metrics_port": "--metrics-port",
}


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """A switch given in the environment; anything but these words is refused, not taken as
    false (DEBUG=ture must not quietly mean something else)."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"is not a boolean: use one of {', '.join(TRUE_WORDS)} or "
                     f"{', '.join(FALSE_WORDS)}")


def env_name(key: str) -> str:
    return f"OPSCENTER_{key.upper()}"


def door_names(key: str) -> str:
    """'--dead-after (OPSCENTER_DEAD_AFTER)', or the variable alone if it has no option."""
    option = OPTIONS.get(key)
    return f"{option} ({env_name(key)})" if option else env_name(key)
