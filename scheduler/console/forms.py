"""The console's forms: every value that comes from a URL or a POST is checked here.

A list's filters are forgiving (a bad value is dropped and named, the rest still applies:
a bookmarked URL never breaks the page); an action's form is strict (one bad value and
nothing is done).
"""

from __future__ import annotations

from django import forms

from scheduler.models import Job, Task
from scheduler.validators import FIRST_YEAR, LAST_YEAR, text_problem

MAX_REASON = 500
MAX_JOBS_PER_ACTION = 1000
MAX_ID_DIGITS = 18  # a bigint; longer is not an id of any row

JOB_SORTS = {
    # value in the URL: (label, annotation or field, descending)
    "name": ("name A→Z", "name", False),
    "-name": ("name Z→A", "name", True),
    "next_fire": ("next fire, soonest first", "next_fire", False),
    "-next_fire": ("next fire, latest first", "next_fire", True),
    "-last_result": ("last result, newest first", "last_at", True),
    "last_result": ("last result, oldest first", "last_at", False),
}
NEVER_RAN = "none"


class ListDateTimeField(forms.DateTimeField):
    """A list filter's date and time (in the viewer's zone unless it gives an offset), within
    the years every door takes: one at the calendar's end, with its offset, would be past it
    once turned into UTC for the database."""

    widget = forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"})

    def validate(self, value):
        super().validate(value)
        if value is not None and not FIRST_YEAR <= value.year <= LAST_YEAR:
            raise forms.ValidationError(
                f"Give a date between the years {FIRST_YEAR} and {LAST_YEAR}.")


class JobFilterForm(forms.Form):
    """The jobs list's query string: search, filters, sort and page."""

    q = forms.CharField(label="Search", required=False, max_length=100, strip=True,
                        widget=forms.TextInput(attrs={"type": "search",
                                                      "placeholder": "name or title"}))
    cluster = forms.ModelChoiceField(label="Cluster", required=False, queryset=None,
                                     empty_label="all clusters", error_messages={
                                         "invalid_choice": "not a cluster of this install."})
    paused = forms.ChoiceField(label="Paused", required=False, choices=[
        ("", "paused or active"), ("paused", "paused"), ("active", "active")])
    kind = forms.ChoiceField(label="Kind", required=False,
                             choices=[("", "any kind"), *Job.Kind.choices])
    state = forms.ChoiceField(label="Last result", required=False, choices=[
        ("", "any result"), *Task.State.choices, (NEVER_RAN, "never ran")])
    sort = forms.ChoiceField(label="Sort", required=False,
                             choices=[(k, v[0]) for k, v in JOB_SORTS.items()])
    page = forms.IntegerField(required=False, min_value=1, max_value=1_000_000,
                              widget=forms.HiddenInput)
    size = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(self, data=None, *, clusters=None):
        super().__init__(data)
        from scheduler.models import Cluster

        self.fields["cluster"].queryset = clusters if clusters is not None else (
            Cluster.objects.order_by("name"))

    def clean_q(self) -> str:
        value = self.cleaned_data["q"]
        problem = text_problem(value)
        if problem:
            raise forms.ValidationError(f"The search text {problem}.")
        return value

    def usable(self) -> tuple[dict, list[str]]:
        """The values that are good (a bad one is left out), and a line for each bad one."""
        self.is_valid()
        good = dict(self.cleaned_data)
        problems = []
        for name, errors in self.errors.items():
            good.pop(name, None)
            raw = self.data.get(name, "")
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            label = self.fields[name].label or name if name in self.fields else name
            problems.append(f"{label} “{shown}” ignored: {' '.join(errors)}")
        return good, problems


class IdListField(forms.Field):
    """One or many row ids (`job=3&job=5`): each must be a positive number."""

    widget = forms.MultipleHiddenInput

    def __init__(self, *, noun: str, limit: int, **kwargs):
        self.noun, self.limit = noun, limit
        super().__init__(**kwargs)

    def to_python(self, value) -> list[int]:
        values = value if isinstance(value, list | tuple) else ([value] if value else [])
        if not values:
            raise forms.ValidationError(f"Select at least one {self.noun}.")
        if len(values) > self.limit:
            raise forms.ValidationError(
                f"At most {self.limit} {self.noun}s at once ({len(values)} were sent).")
        ids: list[int] = []
        for raw in values:
            text = str(raw).strip()
            if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
                shown = text if len(text) <= 20 else text[:20] + "…"
                raise forms.ValidationError(f"“{shown}” is not a {self.noun} id.")
            number = int(text)
            if number not in ids:
                ids.append(number)
        return ids


def clean_reason_text(value: str) -> str:
    """A reason the event log can store (PostgreSQL refuses NUL; no database takes a lone
    surrogate), or a clear ValidationError."""
    problem = text_problem(value)
    if problem:
        raise forms.ValidationError(f"The reason {problem}.")
    return value


class ReasonForm(forms.Form):
    """Every console action's reason: one field, one limit (MAX_REASON), one cleaning. Required
    here (cancel, switch-over); the jobs' actions make it optional."""

    reason = forms.CharField(
        max_length=MAX_REASON, strip=True, widget=forms.Textarea,
        error_messages={
            "required": "Give a reason: it is kept in the event log.",
            "max_length": "The reason is too long (%(show_value)d characters, at most "
                          "%(limit_value)d).",
            "null_characters_not_allowed": "The reason contains a NUL character (\\x00), "
                                           "which cannot be stored.",
        })

    def clean_reason(self) -> str:
        return clean_reason_text(self.cleaned_data["reason"])

    def problems(self) -> list[str]:
        return [message for errors in self.errors.values() for message in errors]


class CancelForm(ReasonForm):
    """Cancel a task: why."""


class SwitchoverForm(ReasonForm):
    """Switch a passive cluster over: to which standby member (its pk; empty: the primary),
    and why. The member itself is checked by the view (it needs the cluster)."""

    target = forms.CharField(required=False, max_length=MAX_ID_DIGITS + 2, strip=True)


class JobActionForm(ReasonForm):
    """An operator action on one or many jobs, with the operator's reason (optional)."""

    ACTIONS = {
        # action: (label, verb in the report, what a job it did not change already was)
        "pause": ("Pause", "paused", "paused"),
        "resume": ("Resume", "resumed", "active"),
        "run_now": ("Run now", "queued to run now", ""),
    }

    action = forms.ChoiceField(choices=[(k, v[0]) for k, v in ACTIONS.items()],
                               error_messages={"invalid_choice": "“%(value)s” is not an "
                                               "action (pause, resume or run_now).",
                                               "required": "Choose an action."})
    job = IdListField(noun="job", limit=MAX_JOBS_PER_ACTION)
    cluster = forms.CharField(required=False)
    next = forms.CharField(required=False, max_length=2000)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = False

    def clean_cluster(self) -> int | None:
        text = (self.cleaned_data["cluster"] or "").strip()
        if not text:
            return None
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
            raise forms.ValidationError("The cluster is not a cluster id.")
        return int(text)

    def clean(self):
        data = super().clean()
        ids = data.get("job")
        if not ids or self.errors:
            return data
        jobs = {job.pk: job for job in Job.objects.filter(pk__in=ids).select_related("cluster")}
        missing = [str(pk) for pk in ids if pk not in jobs]
        if missing:
            raise forms.ValidationError(
                f"No job with id {', '.join(missing[:10])}{'…' if len(missing) > 10 else ''} "
                "(deleted meanwhile?).")
        cluster = data.get("cluster")
        if cluster is not None:
            strangers = [jobs[pk].name for pk in ids if jobs[pk].cluster_id != cluster]
            if strangers:
                raise forms.ValidationError(
                    f"Not in the cluster shown: {', '.join(strangers[:10])}"
                    f"{'…' if len(strangers) > 10 else ''}.")
        data["jobs"] = [jobs[pk] for pk in ids]
        return data
