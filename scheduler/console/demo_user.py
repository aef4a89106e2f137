"""The demo's login (`./run demo`): the superuser `operator`, made by the demo and marked so.

The demo makes it, and on later runs resets its password to the demo's and keeps it a
superuser. An account named `operator` that the demo did not make (no marker, and not the
demo's password) is somebody's real account: the demo refuses to touch it, in one line.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

USERNAME = "operator"
# The marker: an address no mail goes to (RFC 2606's .invalid), set only by the demo.
MARKER_EMAIL = "operator@demo.opscenter.invalid"


class NotTheDemosAccount(Exception):
    pass


def ensure_demo_operator(password: str) -> str:
    """Create or update the demo's operator; what was done ("created", "updated",
    "unchanged"). Raises NotTheDemosAccount for an `operator` the demo did not make."""
    users = get_user_model()
    user = users.objects.filter(username=USERNAME).first()
    if user is None:
        user = users(username=USERNAME, email=MARKER_EMAIL, is_active=True, is_staff=True,
                     is_superuser=True)
        user.set_password(password)
        user.save()
        return "created"
    # Made by the demo: marked, or (a demo older than the marker) it has the demo's password.
    if user.email != MARKER_EMAIL and not user.check_password(password):
        raise NotTheDemosAccount(
            f"a user named {USERNAME!r} already exists and was not made by the demo: the demo "
            "will not reset its password or make it a superuser; remove or rename it, or run "
            "the demo on its own database (DATABASE_URL)")
    changed = not (user.is_active and user.is_staff and user.is_superuser
                   and user.email == MARKER_EMAIL)
    user.is_active = user.is_staff = user.is_superuser = True
    user.email = MARKER_EMAIL
    if not user.check_password(password):
        user.set_password(password)
        changed = True
    if changed:
        user.save()
    return "updated" if changed else "unchanged"
