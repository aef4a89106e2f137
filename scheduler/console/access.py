"""Who may do what in the console, and what every console page knows about its viewer.

Seeing needs the scheduler's view permissions (group viewer); operating (pause, resume, run
now, cancel) needs scheduler.operate_job and switching a cluster over needs
scheduler.switchover_cluster (group operator); editing stays in the admin (administrator).
A control the viewer may not use is shown disabled with the reason, never hidden.
"""

from __future__ import annotations

from functools import wraps
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from scheduler.eventlog import Actor

VIEW_PERMISSION = "scheduler.view_job"
OPERATE_PERMISSION = "scheduler.operate_job"
SWITCHOVER_PERMISSION = "scheduler.switchover_cluster"

NOT_OPERATOR = "Operating needs the operator role (permission scheduler.operate_job)."
NOT_SWITCHER = ("Switching over needs the operator role (permission "
                "scheduler.switchover_cluster).")


def can_view(user) -> bool:
    return user.is_authenticated and user.is_active and user.has_perm(VIEW_PERMISSION)


def can_operate(user) -> bool:
    return can_view(user) and user.has_perm(OPERATE_PERMISSION)


def can_switchover(user) -> bool:
    return can_view(user) and user.has_perm(SWITCHOVER_PERMISSION)


def tier(user) -> str:
    """What a pushed fragment may show this user: pushes are rendered once per tier, not
    once per browser (operate / switch over enabled or not)."""
    return f"o{int(can_operate(user))}s{int(can_switchover(user))}"


def console_view(view):
    """Login and the view permission: anonymous users go to the login page, users without
    the permission get 403 (they are logged in; sending them to log in again would loop)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not can_view(request.user):
            raise PermissionDenied("Your account may not see the scheduler (it needs the "
                                   "viewer, operator or administrator group).")
        return view(request, *args, **kwargs)

    return wrapped


def console_actor(request, reason: str = "") -> Actor:
    return Actor(name=request.user.get_username(), source="console", reason=reason)


def display_zone(user) -> ZoneInfo:
    """The viewer's own display zone (their preference), else the install's TIME_ZONE."""
    name = ""
    preference = getattr(user, "console_preference", None) if user.is_authenticated else None
    if preference is not None:
        name = preference.time_zone
    try:
        return ZoneInfo(name or settings.TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(settings.TIME_ZONE)


def console_context(request) -> dict:
    """Template context for every page (a context processor)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"display_zone": ZoneInfo(settings.TIME_ZONE), "theme": "auto"}
    preference = getattr(user, "console_preference", None)
    return {
        "display_zone": display_zone(user),
        "theme": preference.theme if preference else "auto",
        "may_operate": can_operate(user),
        "may_switchover": can_switchover(user),
        "not_operator": NOT_OPERATOR,
        "not_switcher": NOT_SWITCHER,
    }
