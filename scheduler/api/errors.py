"""Every error of the API is JSON: {"detail": "...", "errors": {field: [messages]}}.

A 400 names the field in its detail ("cron: ..."); Django's ValidationError (raised by the
models' full_clean and by orderactions) becomes a 400 like DRF's own.
"""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.parsers import JSONParser
from rest_framework.views import exception_handler

from scheduler.validators import MAX_DATA_MAP_DEPTH


def _flat(errors, prefix: str = "") -> list[str]:
    """'field: message' lines of a DRF error structure."""
    if isinstance(errors, dict):
        out = []
        for key, value in errors.items():
            name = "" if key in ("non_field_errors", "__all__") else str(key)
            out += _flat(value, f"{prefix}.{name}" if prefix and name else (name or prefix))
        return out
    if isinstance(errors, list):
        return [line for item in errors for line in _flat(item, prefix)]
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def django_errors(exc: DjangoValidationError):
    if hasattr(exc, "error_dict"):
        return {("non_field_errors" if k == "__all__" else k): v
                for k, v in exc.message_dict.items()}
    return list(exc.messages)


def handle(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(django_errors(exc))
    response = exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        lines = _flat(data)
        response.data = {"detail": "; ".join(lines) or "Invalid input.",
                         "errors": data if isinstance(data, dict)
                         else {"non_field_errors": data}}
    elif isinstance(data, dict) and "detail" in data:
        response.data = {"detail": str(data["detail"])}
    else:
        response.data = {"detail": "; ".join(_flat(data))}
    return response


class SafeJSONParser(JSONParser):
    """JSON whose nesting would make the parser recurse too deep, or whose numbers have too
    many digits, is a 400 (the stock parser lets a RecursionError through as a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError(
                f"JSON parse error: nested too deep (a data map has at most "
                f"{MAX_DATA_MAP_DEPTH} levels).") from None


def not_found(request, *args, **kwargs):
    """Any other path under /api/: a JSON 404."""
    return JsonResponse({"detail": f"No API endpoint at {json.dumps(request.path)[1:-1]}."},
                        status=404)
