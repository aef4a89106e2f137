"""Validators shared by models, forms and commands: every door refuses the same bad values."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.exceptions import ValidationError

from scheduler import timing
from scheduler.executors import (
    RESERVED_PARAMETER_NAMES,
    RESERVED_PARAMETER_PREFIXES,
    is_reserved_parameter,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
NAME_HELP = "1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit."


def validate_name(value: str) -> None:
    if not NAME_RE.match(value or ""):
        raise ValidationError(f"'{value}' is not a valid name: {NAME_HELP}")


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


def _check_json_value(value: Any, where: str) -> None:
    # Only plain JSON data: a data map is shown, edited and stored as JSON, and a job
    # must read back exactly what it was given (no floats that are NaN, no custom types).
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(f"{where}: NaN and infinity are not allowed.")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}: keys must be strings.")
            _check_json_value(item, f"{where}.{key}")
        return
    raise ValidationError(f"{where}: {type(value).__name__} is not a JSON value.")


def validate_data_map(value: Any) -> None:
    """A job data map: a JSON object of strings, numbers, booleans, lists and objects."""
    if not isinstance(value, dict):
        raise ValidationError("A data map must be a JSON object, e.g. {\"key\": \"value\"}.")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValidationError("Data map keys must be non-empty strings.")
        if item is None:
            raise ValidationError(f"'{key}': null is not allowed; remove the key instead.")
        _check_json_value(item, key)


def parse_data_map(text: str) -> dict:
    """Parse a data map given on the command line, with a message that says what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"Invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
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
