"""The console's ASGI application plus a bench-only live topic, `benchjob:<pk>`, that shows a
job's title (bench/push_latency.py writes a sequence number and a time into it)."""

from __future__ import annotations

from django.utils.html import format_html

from opscenter.asgi import application  # noqa: F401  (sets Django up)
from scheduler.console.live import renderer


@renderer("benchjob", takes_id=True, tables=("scheduler_job",))
def render_bench_job(topic_id, viewers):
    from scheduler.models import Job

    title = Job.objects.filter(pk=topic_id).values_list("title", flat=True).first() or ""
    html = format_html('<span id="bench-job" hx-swap-oob="true" data-stamp="{}"></span>', title)
    return [html] * len(viewers)
