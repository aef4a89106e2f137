"""`./run demo`'s login: it makes and keeps its own `operator`, never takes over a real one."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from scheduler.console.demo_user import MARKER_EMAIL, NotTheDemosAccount, ensure_demo_operator

pytestmark = pytest.mark.django_db


def test_the_demo_makes_its_operator_then_keeps_it():
    assert ensure_demo_operator("s3cret-1") == "created"
    user = get_user_model().objects.get(username="operator")
    assert user.is_superuser and user.is_staff and user.email == MARKER_EMAIL
    assert ensure_demo_operator("s3cret-1") == "unchanged"
    assert ensure_demo_operator("s3cret-2") == "updated"  # a new OPSCENTER_OPERATOR_PASSWORD
    assert get_user_model().objects.get(username="operator").check_password("s3cret-2")


def test_a_real_account_named_operator_is_never_taken_over():
    real = get_user_model().objects.create_user("operator", "ops@example.com", "theirs")
    with pytest.raises(NotTheDemosAccount, match="not made by the demo"):
        ensure_demo_operator("demo-password")
    real.refresh_from_db()
    assert real.check_password("theirs") and not real.is_superuser and not real.is_staff
    assert real.email == "ops@example.com"


def test_an_operator_of_an_older_demo_is_recognised_by_its_password():
    old = get_user_model().objects.create_superuser("operator", "", "demo-password")
    assert ensure_demo_operator("demo-password") == "updated"
    old.refresh_from_db()
    assert old.email == MARKER_EMAIL
