"""Forms shared by the admin and the console: a job's data map typed as JSON, and the
preview of a schedule's next fire times for a definition not yet saved."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from scheduler import timing
from scheduler.clock import db_now
from scheduler.models import Schedule
from scheduler.validators import parse_data_map, validate_data_map

PREVIEW_COUNT = 10  # fire times shown by a schedule's preview


class DataMapField(forms.JSONField):
    """A job data map typed as JSON. Empty means {}; anything but a JSON object of plain
    values is refused with the validator's message. The model field's validators are not
    enough here: Django skips them for "empty" values such as [] and null."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 80, "style": "font-family: monospace"})

    def bound_data(self, data, initial):
        # A refused form shows exactly what was typed, not a re-encoding of it (which could
        # hold text no page can be written in, such as a lone surrogate from "\ud800").
        if self.disabled:
            return initial
        return None if data is None else forms.fields.InvalidJSONInput(data)

    def to_python(self, value):
        if self.disabled:
            return value
        if value in self.empty_values:
            return {}
        if isinstance(value, str):
            return parse_data_map(value)
        validate_data_map(value)
        return value


class PreviewForm(forms.Form):
    """The query of the preview view: a schedule's definition as typed, not yet saved."""

    kind = forms.ChoiceField(choices=Schedule.Kind.choices)
    cron = forms.CharField(required=False)
    timezone = forms.CharField(required=False)
    interval_seconds = forms.IntegerField(required=False)
    run_at = forms.DateTimeField(required=False)
    start_at = forms.DateTimeField(required=False)
    end_at = forms.DateTimeField(required=False)
    now = forms.DateTimeField(required=False, help_text="Preview from this time, not now.")


def validation_messages(exc: ValidationError, model=Schedule) -> list[str]:
    """A model's validation errors as lines, each named by its field's label."""
    if not hasattr(exc, "error_dict"):
        return list(exc.messages)
    out = []
    for name, errors in exc.message_dict.items():
        label = "" if name == "__all__" else f"{model._meta.get_field(name).verbose_name}: "
        out.extend(f"{label}{message}" for message in errors)
    return out


def preview_for_query(query) -> tuple[list[timing.PreviewFire], str, list[str]]:
    """(fires, zone, errors) for a definition given as query parameters."""
    form = PreviewForm(query)
    if not form.is_valid():
        return [], "", [f"{name}: {message}" if name != "__all__" else message
                        for name, errors in form.errors.items() for message in errors]
    data = form.cleaned_data
    schedule = Schedule(
        kind=data["kind"], cron=data["cron"],
        # A bare URL without a zone means UTC; an emptied field is refused as the form would.
        timezone=data["timezone"] if "timezone" in query else "UTC",
        interval_seconds=data["interval_seconds"], run_at=data["run_at"],
        start_at=data["start_at"], end_at=data["end_at"],
    )
    try:
        schedule.full_clean(exclude={"job", "cluster"}, validate_unique=False,
                            validate_constraints=False)
    except ValidationError as exc:
        return [], "", validation_messages(exc)
    now = data["now"] or db_now()
    if schedule.kind == Schedule.Kind.INTERVAL:
        # What Schedule.save() will do: an interval counts from its start, else from now.
        schedule.anchor_at = schedule.start_at or now
    try:
        return timing.preview(schedule.timing(), now, PREVIEW_COUNT), schedule.timezone, []
    except timing.TimingError as exc:
        return [], "", [str(exc)]


def saved_preview(schedule: Schedule) -> tuple[list[timing.PreviewFire], list[str]]:
    """(fires, errors): the next fire times of a saved schedule's definition, from now."""
    try:
        return timing.preview(schedule.timing(), db_now(), PREVIEW_COUNT), []
    except timing.TimingError as exc:
        return [], [str(exc)]
