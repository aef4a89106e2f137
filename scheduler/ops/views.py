"""/healthz and /metrics of the console process: no login, no session, nothing sensitive."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

log = logging.getLogger("opscenter.ops")

# A load balancer asks every second or so: a database slower than this counts as down.
HEALTH_TIMEOUT_MS = 2000


def check_database() -> str | None:
    """None when the database answers `SELECT 1`, else a short reason (no URL, no host)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL statement_timeout = %s", [HEALTH_TIMEOUT_MS])
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        log.warning("health check: the database does not answer (%s)",
                    (str(exc).strip().splitlines() or [""])[0][:200])
        try:  # the next check (or request) starts from a fresh connection
            connection.close()
        except DatabaseError:
            pass
        return f"unavailable ({type(exc).__name__})"
    return None


@never_cache
@require_safe
def healthz(request):
    began = time.perf_counter()
    problem = check_database()
    body = {"status": "ok" if problem is None else "unavailable",
            "database": problem or "ok",
            "seconds": round(time.perf_counter() - began, 4)}
    return JsonResponse(body, status=200 if problem is None else 503)


def metrics_allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "")
        if given.startswith("Bearer ") and hmac.compare_digest(
                given[7:].strip().encode(), token.encode()):
            return True
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if client.version == 6 and client.ipv4_mapped:
        client = client.ipv4_mapped
    return any(client in network for network in settings.METRICS_ALLOW)


@never_cache
@require_safe
def metrics(request):
    if not metrics_allowed(request):
        return HttpResponseForbidden()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from scheduler.ops.console_metrics import REGISTRY

    try:
        body = generate_latest(REGISTRY)
    except DatabaseError as exc:
        log.warning("metrics: the database does not answer (%s)", type(exc).__name__)
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
