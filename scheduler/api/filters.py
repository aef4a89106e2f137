"""Query parameters of the lists, checked before they reach the database: an id is digits
that fit a bigint, a text has no NUL, a time is ISO 8601 inside the calendar. Anything else
is a 400 naming the parameter."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from scheduler.validators import FIRST_YEAR, LAST_YEAR, text_problem

MAX_ID_DIGITS = 18  # a bigint
MAX_TEXT = 200


def bounded_int(params, name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text in (None, ""):
        return default
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise ValidationError({name: [f"Give a whole number from {low} to {high}."]})
    return int(text)


def _id(name: str, text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
        raise ValidationError({name: ["Give an id (a whole number)."]})
    return int(text)


def _text(name: str, text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ValidationError({name: [f"The text {problem}."]})
    if len(text) > MAX_TEXT:
        raise ValidationError({name: [f"At most {MAX_TEXT} characters."]})
    return text


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValidationError({name: ["Give true or false."]})


def _datetime(name: str, text: str):
    try:
        value = serializers.DateTimeField().to_internal_value(_text(name, text))
    except serializers.ValidationError as exc:
        raise ValidationError({name: exc.detail}) from None
    except (OverflowError, ValueError):
        value = None
    if value is None or not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValidationError({name: [f"Give a time between the years {FIRST_YEAR} and "
                                      f"{LAST_YEAR} (ISO 8601)."]})
    return value


PARSERS = {"id": _id, "text": _text, "bool": _bool, "datetime": _datetime}


class Filters:
    def __init__(self, spec: dict):
        self.spec = spec

    def apply(self, queryset, params):
        for name, (kind, lookup) in self.spec.items():
            text = params.get(name)
            if text is None or text == "":
                continue
            queryset = queryset.filter(**{lookup: PARSERS[kind](name, text)})
        return queryset
