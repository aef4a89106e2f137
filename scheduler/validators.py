"""Validators shared by models, forms and commands: every door refuses the same bad values."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError

from scheduler import timing
from scheduler.executors import (
    RESERVED_PARAMETER_NAMES,
    RESERVED_PARAMETER_PREFIXES,
    is_reserved_parameter,
)

# Matched with fullmatch: with `$`, "name\n" would pass (`$` also matches before a final
# newline).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
NAME_HELP = "1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit."

# A data map is configuration, not a payload: 64 KiB of JSON text and 32 levels of nesting
# are far above any real one, and far below what would make a page, an event or a job's
# environment slow (or Python's JSON parser recurse too deep).
MAX_DATA_MAP_BYTES = 64 * 1024
MAX_DATA_MAP_DEPTH = 32

# What every database we run on can store: PostgreSQL's integer and bigint, and datetimes
# that can be moved to any time zone without leaving Python's year 1..9999.
INT_RANGES = {
    "SmallIntegerField": (-(2**15), 2**15 - 1),
    "PositiveSmallIntegerField": (0, 2**15 - 1),
    "IntegerField": (-(2**31), 2**31 - 1),
    "PositiveIntegerField": (0, 2**31 - 1),
    "BigIntegerField": (-(2**63), 2**63 - 1),
    "PositiveBigIntegerField": (0, 2**63 - 1),
}
FIRST_YEAR, LAST_YEAR = 2, 9998


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def validate_name(value: str) -> None:
    if not is_name(value):
        raise ValidationError(f"{text_for_message(value)!r} is not a valid name: {NAME_HELP}")


def celery_queue_problem(value: str) -> str | None:
    """Why `value` cannot name a Celery queue, or None. A name, as a job's: it is a file name
    on the filesystem broker, and RabbitMQ refuses to declare a queue named amq.*."""
    if not is_name(value):
        return f"{text_for_message(value)!r} is not a valid Celery queue: {NAME_HELP}"
    if value.startswith("amq."):
        return f"{value!r} is not a valid Celery queue: RabbitMQ reserves names starting 'amq.'."
    return None


def text_for_message(value: object) -> str:
    """A value safe to put in a message (and so in a page, a log or a database row)."""
    text = str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def text_problem(value: str) -> str | None:
    """Why this text cannot be stored (PostgreSQL refuses NUL in text; a lone surrogate
    cannot be encoded as UTF-8 for any database), or None."""
    if "\x00" in value:
        return "contains a NUL character (\\x00), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains invalid Unicode (a lone surrogate), which cannot be stored"
    return None


def validate_text(value: str) -> None:
    problem = text_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValidationError(f"This text {problem}.")


def door_errors(instance) -> dict[str, list[str]]:
    """What no database (or no later computation) can hold, for every concrete field of a
    model instance: text with NUL or lone surrogates, integers beyond PostgreSQL's columns,
    floats that are not finite, datetimes at the very ends of the calendar. Each model's
    clean() adds these, so every door that validates a model refuses them with a message."""
    errors: dict[str, list[str]] = {}
    for field in instance._meta.concrete_fields:
        if field.is_relation:
            continue
        value = getattr(instance, field.attname, None)
        if value is None:
            continue
        kind = field.get_internal_type()
        message = None
        if isinstance(value, str):
            problem = text_problem(value)
            message = f"This text {problem}." if problem else None
        elif kind in INT_RANGES and isinstance(value, int):
            low, high = INT_RANGES[kind]
            if not low <= value <= high:
                message = f"Ensure this value is between {low} and {high}."
        elif isinstance(value, float) and not math.isfinite(value):
            message = "Give a finite number (not NaN or infinity)."
        elif isinstance(value, datetime) and not FIRST_YEAR <= value.year <= LAST_YEAR:
            message = f"Give a date between the years {FIRST_YEAR} and {LAST_YEAR}."
        if message:
            errors[field.name] = [message]
    return errors


def validate_cron(value: str) -> None:
    try:
        timing.validate_cron(value)
    except timing.TimingError as exc:
        raise ValidationError(str(exc)) from None


def validate_timezone(value: str) -> None:
    try:
        timing.validate_timezone(value)
    except timing.TimingError as exc:
        raise ValidationError(str(exc)) from None


def _check_json_value(value: Any, where: str, depth: int = 1) -> None:
    # Only plain JSON data: a data map is shown, edited and stored as JSON, and a job
    # must read back exactly what it was given (no floats that are NaN, no custom types).
    if depth > MAX_DATA_MAP_DEPTH:
        raise ValidationError(f"{where}: nested more than {MAX_DATA_MAP_DEPTH} levels deep.")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ValidationError(f"{where}: the text {problem}.")
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(f"{where}: NaN and infinity are not allowed.")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}: keys must be strings.")
            if text_problem(key):
                raise ValidationError(f"{where}: the key {text_for_message(key)!r} "
                                      f"{text_problem(key)}.")
            _check_json_value(item, f"{where}.{key}", depth + 1)
        return
    raise ValidationError(f"{where}: {type(value).__name__} is not a JSON value.")


def validate_data_map(value: Any) -> None:
    """A job data map: a JSON object of strings, numbers, booleans, lists and objects."""
    if not isinstance(value, dict):
        raise ValidationError("A data map must be a JSON object, e.g. {\"key\": \"value\"}.")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValidationError("Data map keys must be non-empty strings.")
        if text_problem(key):
            raise ValidationError(f"The key {text_for_message(key)!r} {text_problem(key)}.")
        if item is None:
            raise ValidationError(f"'{key}': null is not allowed; remove the key instead.")
        _check_json_value(item, key, 2)
    try:
        size = len(json_text(value).encode("utf-8"))
    except (ValueError, RecursionError):
        return  # what json cannot write is refused above, with a better message
    if size > MAX_DATA_MAP_BYTES:
        raise ValidationError(f"A data map is at most {MAX_DATA_MAP_BYTES // 1024} KiB of "
                              f"JSON; this one is {size // 1024} KiB.")


def parse_data_map(text: str) -> dict:
    """Parse a data map given on the command line, with a message that says what is wrong."""
    if len(text) > MAX_DATA_MAP_BYTES:  # before parsing: a huge text costs nothing here
        raise ValidationError(f"A data map is at most {MAX_DATA_MAP_BYTES // 1024} KiB of "
                              f"JSON; this one is {len(text) // 1024} KiB.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"Invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:
        raise ValidationError(f"Invalid data map: JSON nested more than "
                              f"{MAX_DATA_MAP_DEPTH} levels deep.") from None
    except ValueError:  # Python refuses to read integers of thousands of digits
        raise ValidationError("Invalid JSON: a number with too many digits.") from None
    validate_data_map(value)
    return value


def json_text(value) -> str:
    """JSON as stored, refusing what JSON cannot hold (NaN, infinity, non-JSON types)."""
    return json.dumps(value, allow_nan=False)


def validate_parameters(value: Any) -> None:
    """A job's, task's or order's parameters: a data map whose keys do not name a reserved
    environment variable (shell jobs see each parameter in their environment)."""
    validate_data_map(value)
    # Why these names: see executors.RESERVED_PARAMETER_NAMES.
    reserved = sorted(name for name in value if is_reserved_parameter(name))
    if reserved:
        raise ValidationError(
            f"Parameter {', '.join(repr(n) for n in reserved)} would replace the node's own "
            f"environment variable: {', '.join(sorted(RESERVED_PARAMETER_NAMES))} and names "
            f"starting with {', '.join(RESERVED_PARAMETER_PREFIXES)} are reserved. Choose "
            "another name.")


def parse_parameters(text: str) -> dict:
    """Parameters given on the command line (parse_data_map, then validate_parameters)."""
    value = parse_data_map(text)
    validate_parameters(value)
    return value
