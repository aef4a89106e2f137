"""The admin lists' filters from the URL: a value the database cannot take is refused.

Every admin list takes field lookups from its query string (`?scheduled_for__gte=...`,
`?id__in=...`, `?q=...`), for our models and for Django's own (users, groups, tokens, task
results) alike. Django turns a value it cannot parse into its "?e=1" page, but a value that
parses and then cannot reach the database raised a 500: a date whose offset takes it past the
calendar's end (`0001-01-01T00:00:00+14:00`), a whole number beyond 64 bits, a NUL (PostgreSQL),
a search term SQLite finds too long. This middleware looks at the list views of every admin
(the views Django marks with their `model_admin`) before they run, and sends the operator back
to the list without the values refused, with a message naming each one and what is allowed.
"""

from __future__ import annotations

import re
from datetime import date

from django.contrib import messages
from django.contrib.admin.views.main import (
    ALL_VAR,
    IS_FACETS_VAR,
    IS_POPUP_VAR,
    ORDER_VAR,
    PAGE_VAR,
    SEARCH_VAR,
    SOURCE_MODEL_VAR,
    TO_FIELD_VAR,
)
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.http import HttpResponseRedirect, JsonResponse
from django.utils.dateparse import parse_date, parse_datetime

from scheduler.validators import FIRST_YEAR, LAST_YEAR, text_problem

# The list's own parameters: not field lookups (SEARCH_VAR is checked as text).
NOT_LOOKUPS = {ALL_VAR, IS_FACETS_VAR, IS_POPUP_VAR, ORDER_VAR, PAGE_VAR, SOURCE_MODEL_VAR,
               TO_FIELD_VAR, "e", "_changelist_filters"}
SEARCH_LIMIT = 1000  # characters: SQLite refuses a LIKE pattern of 50,000 bytes and more
INT64 = 2**63 - 1
_WHOLE = re.compile(r"[+-]?\d+")
# Lookups whose value is a whole number whatever the field (parts of a date, lengths...).
_NUMBER_LOOKUPS = {"year", "iso_year", "month", "day", "week", "week_day", "iso_week_day",
                   "quarter", "hour", "minute", "second"}
_DATE_PARTS = {"year": (FIRST_YEAR, LAST_YEAR), "iso_year": (FIRST_YEAR, LAST_YEAR),
               "month": (1, 12), "day": (1, 31)}


def _field_and_lookup(model, key: str) -> tuple[models.Field | None, str]:
    """The field a lookup key ends at (following relations) and the lookup after it."""
    field = None
    parts = key.split("__")
    for i, part in enumerate(parts):
        if field is not None:
            if not field.is_relation or field.related_model is None:
                return field, "__".join(parts[i:])
            model = field.related_model
        try:
            field = model._meta.pk if part == "pk" else model._meta.get_field(part)
        except FieldDoesNotExist:
            # Not a field: a lookup on the field before, or a filter of its own (None).
            return field, "__".join(parts[i:]) if field is not None else ""
    return field, ""


def _is_number_field(field: models.Field) -> bool:
    if field.is_relation and getattr(field, "target_field", None) is not None:
        field = field.target_field
    return isinstance(field, models.IntegerField | models.AutoField | models.FloatField
                      | models.DecimalField)


def _date_problem(value: str) -> str | None:
    try:
        parsed: date | None = parse_datetime(value) or parse_date(value)
    except ValueError:  # a date that does not exist: Django's own refusal handles it
        return None
    if parsed is not None and not FIRST_YEAR <= parsed.year <= LAST_YEAR:
        return f"give a date between the years {FIRST_YEAR} and {LAST_YEAR}"
    return None


def value_problem(model, key: str, value: str) -> str | None:
    """Why the database cannot take `value` for the list's parameter `key`, or None."""
    problem = text_problem(value)
    if problem:
        return problem
    if key == SEARCH_VAR:
        if len(value) > SEARCH_LIMIT:
            return f"search for at most {SEARCH_LIMIT:,} characters"
        return None
    field, lookup = _field_and_lookup(model, key)
    if field is None:
        return None
    values = value.split(",") if lookup == "in" else [value]
    for one in values:
        one = one.strip()
        if (lookup in _NUMBER_LOOKUPS or _is_number_field(field)) and _WHOLE.fullmatch(one) \
                and abs(int(one)) > INT64:
            return f"give a whole number from {-INT64:,} to {INT64:,}"
        if isinstance(field, models.DateField) and lookup in _DATE_PARTS and \
                _WHOLE.fullmatch(one):
            # The date hierarchy computes the end of a year, month or day outside Django's
            # own refusal: year 9999 or month 13 raised there.
            low, high = _DATE_PARTS[lookup]
            if not low <= int(one) <= high:
                return f"give a {lookup.replace('_', ' ')} from {low} to {high}"
        if isinstance(field, models.DateField) and lookup not in _NUMBER_LOOKUPS:
            problem = _date_problem(one)
            if problem:
                return problem
    return None


class AdminListFilterGuard:
    """Middleware: refuses, with a message, list filters the database cannot take."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        user = getattr(request, "user", None)
        if match is None or user is None or not (user.is_active and user.is_staff):
            return None  # the admin sends them to its login page, never reading the filters
        if match.url_name == "autocomplete" and match.namespace == "admin":
            term = request.GET.get("term", "")
            problem = value_problem(None, SEARCH_VAR, term)
            if problem:
                return JsonResponse({"error": f"Search not run: {problem}."}, status=400)
            return None
        model_admin = getattr(view_func, "model_admin", None)
        if model_admin is None or not (match.url_name or "").endswith("_changelist"):
            return None
        # POST too: an action on the list is posted with the list's filters in the URL.
        kept, refused = request.GET.copy(), []
        for key in request.GET:
            if key in NOT_LOOKUPS:
                continue
            for value in request.GET.getlist(key):
                problem = value_problem(model_admin.model, key, value)
                if problem:
                    refused.append(f"{key}={value[:60]!r}: {problem}")
                    kept.pop(key, None)
                    break
        if not refused:
            return None
        messages.error(request, "Filter not applied: " + "; ".join(refused) + ".")
        query = kept.urlencode()
        return HttpResponseRedirect(request.path + (f"?{query}" if query else ""))
