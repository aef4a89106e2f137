"""The operator's admin: every model, the daemon's fields read-only, and operator actions
that call the model methods, so each one is recorded in the event log with the user's name.

What the daemon owns (member rows, tasks, misfires, events, next fire times, lease fields)
is shown, never edited here. A schedule's page previews its next fire times, both for the
saved definition and live while it is edited (static/scheduler/schedule_preview.js).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Now
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from scheduler import eventlog, orderactions, timing
from scheduler.eventlog import Actor
from scheduler.forms import PREVIEW_COUNT, DataMapField, preview_for_query, saved_preview
from scheduler.membership import MemberRefused, request_switchover
from scheduler.models import (
    ChainNode,
    Cluster,
    Event,
    Job,
    JobChain,
    Member,
    MisfireRecord,
    Order,
    Schedule,
    Task,
    check_chain_graph,
)

admin.site.site_header = "opscenter operations"
admin.site.site_title = "opscenter"
admin.site.index_title = "Operations"

# Operator actions are offered on the change list and, as one-click actions, on the object's
# own page (Django 6.1's change-form actions), so no template override is needed.
LIST_AND_PAGE = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]

# The look of the partials shared with the console (templates/partials/): state badges, fire
# previews, audit counts, logs.
STYLE = forms.Media(css={"all": ["scheduler/admin.css"]})


# ---------------------------------------------------------------------------- small helpers


def actor_of(request) -> Actor:
    """The user, for the events their actions record (the door: the admin)."""
    return Actor(name=request.user.get_username(), source="admin")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def report(request, done: int, skipped: int, noun: str, verb: str, skipped_as: str) -> None:
    """'3 jobs paused; 1 was already paused' as a success (or, if nothing changed, a warning)."""
    text = f"{plural(done, noun)} {verb}"
    if skipped:
        text += f"; {skipped} {'was' if skipped == 1 else 'were'} already {skipped_as}"
    messages.add_message(request, messages.SUCCESS if done else messages.WARNING, text)


def badge(state: str, label: str = ""):
    return render_to_string("partials/state_badge.html", {"state": state, "label": label})


def seconds(delta) -> str:
    return "-" if delta is None else f"{delta.total_seconds():.1f} s"


def short_time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def admin_link(obj, text=None):
    if obj is None:
        return "-"
    url = reverse(f"admin:scheduler_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def save_changed(obj, form, change: bool, also: list[str] = ()) -> None:
    """Save only the fields the operator changed: the daemon writes other fields of the same
    row meanwhile (a stateful job's data map, an order's state), and a full save would put
    back the values read when the page was loaded. (Fields with a callable default, such as
    the data maps, carry their initial value in the form, so "changed" means changed by the
    operator since the page was loaded.)"""
    if change:
        obj.save(update_fields=[*form.changed_data, "updated_at", *also])
    else:
        obj.save()


def save_schedule(schedule: Schedule, changed: list[str] | None, actor: Actor) -> None:
    # The event that Schedule.save() writes says who changed the definition.
    if schedule.pk is None or changed is None:
        schedule.save(actor=actor)
        return
    fields = {*changed, "updated_at"}
    if fields & set(Schedule.DEFINITION_FIELDS):
        # save() recomputes these when the definition changed; they must be written too.
        fields |= {"anchor_at", "version", "next_fire_at"}
    schedule.save(update_fields=sorted(fields), actor=actor)


DATA_MAP_OVERRIDES = {models.JSONField: {"form_class": DataMapField}}


def label_jobs_with_cluster(formfield):
    """Job names are unique per cluster only, so a job select says which cluster."""
    if formfield is not None:
        formfield.queryset = formfield.queryset.select_related("cluster")
        formfield.label_from_instance = lambda job: f"{job.cluster.name} / {job.name}"
    return formfield


class JobFilter(admin.RelatedFieldListFilter):
    def field_choices(self, field, request, model_admin):
        return [(job.pk, f"{job.cluster.name} / {job.name}")
                for job in Job.objects.select_related("cluster")]


class MemberFilter(admin.RelatedFieldListFilter):
    def field_choices(self, field, request, model_admin):
        # One query, not one per member for its cluster's name.
        return [(m.pk, f"{m.name}@{m.cluster.name} (pid {m.pid})")
                for m in Member.objects.select_related("cluster")]


def heartbeat_age():
    # The database's clock, like everything that judges a heartbeat (one clock).
    return ExpressionWrapper(Now() - F("heartbeat_at"), output_field=DurationField())


# Operating is not editing (scheduler/roles.py): each operator action names the permission it
# needs, whatever the user may change.
ACTION_PERMISSIONS = {"operate": "scheduler.operate_job",
                      "switchover": "scheduler.switchover_cluster"}


class OperatorActions:
    """A ModelAdmin mixin for operator actions: offered only to users with their permission,
    and a POST that names one anyway (a stale page, a forged request) is refused with a
    message before anything runs."""

    def has_operate_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(ACTION_PERMISSIONS["operate"])

    def has_switchover_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(ACTION_PERMISSIONS["switchover"])

    def changelist_view(self, request, extra_context=None):
        return (self._refuse_actions_not_allowed(request)
                or super().changelist_view(request, extra_context))

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return (self._refuse_actions_not_allowed(request)
                or super().changeform_view(request, object_id, form_url, extra_context))

    def _refuse_actions_not_allowed(self, request):
        if request.method != "POST":
            return None
        asked = {*request.POST.getlist("action"),
                 *request.POST.getlist(f"{ActionLocation.CHANGE_FORM.value}-action")}
        allowed = {*self.get_actions(request),
                   *self.get_actions(request, action_location=ActionLocation.CHANGE_FORM)}
        refused = sorted(asked & set(self.actions or ()) - allowed)
        for name in refused:
            action = getattr(self, name)
            needs = " or ".join(ACTION_PERMISSIONS.get(p, f"{p} permission")
                                for p in getattr(action, "allowed_permissions", ()))
            messages.error(request, f"Refused: “{action.short_description}” needs the "
                                    f"permission {needs}; nothing was changed.")
        return HttpResponseRedirect(request.get_full_path()) if refused else None


class ActionsAdmin(admin.ModelAdmin):
    """Operator actions on rows picked by id: ids that are not ids of this table (a crafted
    post) are refused with a message, where Django's own lookup would end in a 500."""

    def response_action(self, request, queryset, **kwargs):
        picked = request.POST.getlist(ACTION_CHECKBOX_NAME)
        if not all(value.isdigit() and 0 < int(value) < 2**63 for value in picked):
            messages.error(request, "Those are not ids of rows of this list: nothing was done.")
            return None  # the list again, unchanged
        return super().response_action(request, queryset, **kwargs)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the daemon writes: shown, never added or edited here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# ---------------------------------------------------------------------------- schedule preview


def fire_preview(fires: list[timing.PreviewFire], zone: str, errors: list[str] = ()):
    return render_to_string("partials/fire_preview.html",
                            {"fires": fires, "zone": zone, "errors": list(errors)})


def preview_box(schedule: Schedule | None):
    """The saved definition's next fire times, and a place for the live preview of edits."""
    saved = schedule is not None and schedule.pk is not None
    fires, errors = saved_preview(schedule) if saved else ([], [])
    return render_to_string("partials/schedule_preview.html", {
        "saved": saved, "paused": saved and schedule.paused, "fires": fires,
        "zone": schedule.timezone if saved else "", "errors": errors,
        "preview_url": reverse("admin:scheduler_schedule_preview"),
    })


SCHEDULE_MEDIA = STYLE + forms.Media(js=["scheduler/schedule_preview.js"])


# ---------------------------------------------------------------------------- clusters, members


class MemberInline(admin.TabularInline):
    model = Member
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "state_badge", "role", "backup_precedence", "host", "pid", "version",
              "started_at", "heartbeat", "running_tasks", "stopped_at", "stop_reason")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        # Live members first, then history (a restart is a new row), newest first.
        live_first = Case(When(state__in=Member.LIVE_STATES, then=Value(0)), default=Value(1))
        return (super().get_queryset(request).annotate(live_rank=live_first,
                                                        heartbeat_age=heartbeat_age())
                .order_by("live_rank", "name", "-started_at"))

    @admin.display(description="state")
    def state_badge(self, obj):
        return badge(obj.state)

    @admin.display(description="last heartbeat")
    def heartbeat(self, obj):
        return f"{seconds(getattr(obj, 'heartbeat_age', None))} ago"


@admin.register(Cluster)
class ClusterAdmin(OperatorActions, ActionsAdmin):
    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("name", "mode", "active_member", "lease_epoch", "lease_expires_at",
                    "live_members")
    list_filter = ("mode",)
    search_fields = ("name", "description")
    list_select_related = ("lease_holder",)
    fields = ("name", "description", "mode", "lease_holder", "lease_epoch", "lease_expires_at",
              "handover_to", "created_at")
    readonly_fields = ("mode", "lease_holder", "lease_epoch", "lease_expires_at", "handover_to",
                       "created_at")
    inlines = [MemberInline]
    actions = ["switch_over"]

    def get_readonly_fields(self, request, obj=None):
        # Nodes and commands find a cluster by its name.
        return self.readonly_fields + (("name",) if obj else ())

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            live_count=Count("members", filter=Q(members__state__in=Member.LIVE_STATES))
        )

    @admin.display(description="active member", ordering="lease_holder__name")
    def active_member(self, obj):
        holder = obj.lease_holder
        if holder is None:
            return "-"
        return holder.name if holder.state == "active" else f"{holder.name} ({holder.state})"

    @admin.display(description="live members", ordering="live_count")
    def live_members(self, obj):
        return obj.live_count

    @admin.action(description="Switch over to the primary",
                  description_plural="Switch over to the primary", permissions=["switchover"],
                  location=LIST_AND_PAGE)
    def switch_over(self, request, queryset):
        for cluster in queryset:
            try:
                target = request_switchover(cluster.name, None, actor_of(request))
            except MemberRefused as exc:
                messages.error(request, f"Cluster {cluster.name}: {exc}")
            else:
                messages.success(request, f"Cluster {cluster.name}: switch-over to {target.name} "
                                          "requested; the active member hands over shortly.")


@admin.register(Member)
class MemberAdmin(ReadOnlyAdmin):
    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("name", "cluster", "state_badge", "role", "backup_precedence", "host", "pid",
                    "version", "started_at", "heartbeat", "running_tasks", "skew",
                    "stop_reason")
    list_filter = ("cluster", "state", "mode")
    search_fields = ("name", "host", "cluster__name")
    list_select_related = ("cluster",)
    date_hierarchy = "started_at"
    readonly_fields = ("heartbeat", "skew")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(heartbeat_age=heartbeat_age())

    def has_delete_permission(self, request, obj=None):
        # History rows only: a live member's row is its identity while it runs. (Asks the
        # user's delete permission past ReadOnlyAdmin, which refuses every delete.)
        return admin.ModelAdmin.has_delete_permission(self, request, obj) and (
            obj is None or not obj.is_live)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return badge(obj.state)

    @admin.display(description="last heartbeat (age)", ordering="-heartbeat_at")
    def heartbeat(self, obj):
        return f"{seconds(getattr(obj, 'heartbeat_age', None))} ago"

    @admin.display(description="clock skew", ordering="clock_skew_ms")
    def skew(self, obj):
        return f"{obj.clock_skew_ms} ms"


# ---------------------------------------------------------------------------- jobs, schedules

SCHEDULE_DEFINITION = (
    ("kind", "title"), ("cron", "timezone"), "interval_seconds", "run_at", ("start_at", "end_at"),
    ("misfire_policy", "misfire_grace_seconds", "run_all_limit"),
)


class ScheduleInline(admin.StackedInline):
    model = Schedule
    extra = 0
    show_change_link = True
    fields = (*SCHEDULE_DEFINITION, ("paused", "next_fire_at"), "fire_preview")
    readonly_fields = ("paused", "next_fire_at", "fire_preview")

    def get_extra(self, request, obj=None, **kwargs):
        return 0 if obj else 1

    @admin.display(description=f"next {PREVIEW_COUNT} fire times")
    def fire_preview(self, obj):
        return preview_box(obj)


@admin.register(Job)
class JobAdmin(OperatorActions, ActionsAdmin):
    list_display = ("name", "cluster", "kind", "paused", "schedules_summary", "last_task_state",
                    "next_fire")
    list_filter = ("cluster", "kind", "executor", "isolation", "paused", "stateful")
    search_fields = ("name", "title", "command")
    list_select_related = ("cluster",)
    formfield_overrides = DATA_MAP_OVERRIDES
    inlines = [ScheduleInline]
    actions = ["pause_jobs", "resume_jobs", "run_jobs_now"]
    readonly_fields = ("paused", "next_fire", "last_task_state", "created_at", "updated_at",
                       "recent_tasks", "audit_summary")
    fieldsets = (
        (None, {"fields": ("cluster", "name", "title", "kind", "command", "isolation",
                           "working_directory")}),
        ("Data", {"fields": ("parameters", "stateful", "data_map")}),
        ("Execution", {"fields": (("timeout_seconds", "max_retries", "retry_backoff_seconds"),
                                  ("max_parallel", "overlap_policy"), "recover_lost", "affinity",
                                  ("executor", "celery_queue"))}),
        ("State", {"fields": (("paused", "next_fire", "last_task_state"),
                              ("created_at", "updated_at"))}),
        ("Recent tasks", {"fields": ("recent_tasks",)}),
        ("Audit", {"fields": ("audit_summary",)}),
    )

    @property
    def media(self):
        return super().media + SCHEDULE_MEDIA

    @admin.display(description="fires owed (manage.py auditfires)")
    def audit_summary(self, obj):
        """Counts per verdict of the job's owed fires in the last hour and the last day."""
        if obj is None or obj.pk is None:
            return "-"
        from datetime import timedelta

        from scheduler import audit

        counts = audit.job_counts(obj, {"last hour": timedelta(hours=1),
                                        "last day": timedelta(days=1)})
        rows = [(verdict, [(counts[label][verdict],
                            verdict in audit.FAILING and bool(counts[label][verdict]))
                           for label in counts])
                for verdict in audit.ALL_VERDICTS]
        return render_to_string("partials/audit_summary.html",
                                {"windows": list(counts), "rows": rows})

    def get_readonly_fields(self, request, obj=None):
        # Schedules carry their job's cluster for the daemon's due query; moving a job would
        # leave them behind.
        return self.readonly_fields + (("cluster",) if obj else ())

    def get_queryset(self, request):
        last_task = Task.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for", "-id")
        next_fire = Schedule.objects.filter(
            job=OuterRef("pk"), paused=False, next_fire_at__isnull=False
        ).order_by("next_fire_at")
        return (super().get_queryset(request)
                .annotate(last_state=Subquery(last_task.values("state")[:1]),
                          next_fire_time=Subquery(next_fire.values("next_fire_at")[:1]))
                .prefetch_related("schedules"))

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            save_changed(obj, form, change)
            if not change:
                eventlog.job_created(obj, actor_of(request))
            elif form.changed_data:
                eventlog.job_changed(obj, form.changed_data, actor_of(request))

    def delete_model(self, request, obj):
        with transaction.atomic():
            eventlog.job_deleted(obj, actor_of(request))
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for job in queryset:
                eventlog.job_deleted(job, actor_of(request))
            super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        if formset.model is not Schedule:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)  # applies the forms; fills new/changed/deleted_objects
        actor = actor_of(request)
        for schedule in formset.deleted_objects:
            eventlog.schedule_deleted(schedule, actor)
            schedule.delete()
        for schedule in formset.new_objects:
            save_schedule(schedule, None, actor)
        for schedule, changed in formset.changed_objects:
            save_schedule(schedule, changed, actor)

    @admin.display(description="schedules")
    def schedules_summary(self, obj):
        schedules = obj.schedules.all()  # prefetched
        if not schedules:
            return "-"
        return format_html_join(
            "", "<div>#{} {}{}</div>",
            ((s.pk, s.describe(), " (paused)" if s.paused else "") for s in schedules),
        )

    @admin.display(description="last task")
    def last_task_state(self, obj):
        state = getattr(obj, "last_state", None)
        return badge(state) if state else "-"

    @admin.display(description="next fire", ordering="next_fire_time")
    def next_fire(self, obj):
        if obj.paused:
            return "paused"
        return short_time(getattr(obj, "next_fire_time", None))

    @admin.display(description="last 20 tasks")
    def recent_tasks(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        tasks = obj.tasks.select_related("member").order_by("-scheduled_for", "-id")[:20]
        all_url = reverse("admin:scheduler_task_changelist") + f"?job__id__exact={obj.pk}"
        return render_to_string("partials/recent_tasks.html", {
            "tasks": tasks, "task_url_name": "admin:scheduler_task_change",
            "all_url": all_url if tasks else "", "display_zone": "UTC"})

    @admin.action(description="Pause the job", description_plural="Pause selected jobs",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def pause_jobs(self, request, queryset):
        jobs = list(queryset)
        done = sum(job.pause(actor_of(request)) for job in jobs)
        report(request, done, len(jobs) - done, "job", "paused", "paused")

    @admin.action(description="Resume the job", description_plural="Resume selected jobs",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def resume_jobs(self, request, queryset):
        jobs = list(queryset)
        done = sum(job.resume(actor_of(request)) for job in jobs)
        report(request, done, len(jobs) - done, "job", "resumed", "running")

    @admin.action(description="Run the job now", description_plural="Run selected jobs now",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def run_jobs_now(self, request, queryset):
        jobs = list(queryset)
        tasks = [job.run_now(actor_of(request)) for job in jobs]
        links = format_html_join(", ", "{}", ((admin_link(t, t.pk),) for t in tasks))
        messages.success(request, format_html("{} queued to run now (task {}).",
                                              plural(len(tasks), "job"), links))
        paused = [job.name for job in jobs if job.paused]
        if paused:
            messages.warning(request, f"Paused, so the task waits until resumed: "
                                      f"{', '.join(paused)}.")


@admin.register(Schedule)
class ScheduleAdmin(OperatorActions, ActionsAdmin):
    list_display = ("id", "job", "cluster", "definition", "paused", "next_fire_at",
                    "last_fire_at", "misfire_policy")
    list_display_links = ("id", "job")
    list_filter = ("cluster", "kind", "paused", "misfire_policy")
    search_fields = ("job__name", "title", "cron")
    list_select_related = ("job", "cluster")
    actions = ["pause_schedules", "resume_schedules"]
    readonly_fields = ("paused", "next_fire_at", "last_fire_at", "anchor_at", "version",
                       "created_at", "updated_at", "fire_preview")
    fieldsets = (
        (None, {"fields": ("job",)}),
        ("When", {"fields": SCHEDULE_DEFINITION}),
        ("State", {"fields": (("paused", "next_fire_at", "last_fire_at"),
                              ("anchor_at", "version"), ("created_at", "updated_at"))}),
        (f"Next {PREVIEW_COUNT} fire times", {"fields": ("fire_preview",)}),
    )

    @property
    def media(self):
        return super().media + SCHEDULE_MEDIA

    def get_urls(self):
        preview = path("preview/", self.admin_site.admin_view(self.preview_view),
                       name="scheduler_schedule_preview")
        return [preview, *super().get_urls()]

    def preview_view(self, request):
        """An HTML fragment: the next fire times of the definition in the query, or what is
        wrong with it. The live preview of the schedule forms fetches it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        fires, zone, errors = preview_for_query(request.GET)
        return HttpResponse(fire_preview(fires, zone, errors))

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (("job",) if obj else ())

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)
        return label_jobs_with_cluster(formfield) if db_field.name == "job" else formfield

    def save_model(self, request, obj, form, change):
        save_schedule(obj, form.changed_data if change else None, actor_of(request))

    def delete_model(self, request, obj):
        with transaction.atomic():
            eventlog.schedule_deleted(obj, actor_of(request))
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for schedule in queryset.select_related("job"):
                eventlog.schedule_deleted(schedule, actor_of(request))
            super().delete_queryset(request, queryset)

    @admin.display(description="definition")
    def definition(self, obj):
        return obj.describe()

    @admin.display(description=f"next {PREVIEW_COUNT} fire times")
    def fire_preview(self, obj):
        return preview_box(obj)

    @admin.action(description="Pause the schedule",
                  description_plural="Pause selected schedules", permissions=["operate"],
                  location=LIST_AND_PAGE)
    def pause_schedules(self, request, queryset):
        schedules = list(queryset.select_related("job"))
        done = sum(s.pause(actor_of(request)) for s in schedules)
        report(request, done, len(schedules) - done, "schedule", "paused", "paused")

    @admin.action(description="Resume the schedule",
                  description_plural="Resume selected schedules", permissions=["operate"],
                  location=LIST_AND_PAGE)
    def resume_schedules(self, request, queryset):
        schedules = list(queryset.select_related("job"))
        done = sum(s.resume(actor_of(request)) for s in schedules)
        report(request, done, len(schedules) - done, "schedule", "resumed", "running")


# ---------------------------------------------------------------------------- tasks, history


@admin.register(Task)
class TaskAdmin(OperatorActions, ActionsAdmin):
    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("id", "job", "trigger", "scheduled_for", "state_badge", "attempt",
                    "member_name", "started_at", "finished_at", "duration", "late", "exit_code")
    list_filter = ("state", "trigger", "cluster", ("member", MemberFilter), ("job", JobFilter))
    search_fields = ("job__name",)
    date_hierarchy = "scheduled_for"
    list_select_related = ("job", "member")
    # The task table grows without end: skip the second, unfiltered COUNT(*).
    show_full_result_count = False
    actions = ["cancel_tasks"]
    readonly_fields = ("duration", "late", "log")
    fieldsets = (
        (None, {"fields": (("job", "schedule", "cluster"), ("trigger", "state", "attempt"),
                           ("scheduled_for", "not_before"), "member",
                           ("claimed_at", "started_at", "finished_at", "duration", "late"),
                           ("exit_code", "error"), ("requested_by", "cancel_reason"),
                           ("retry_of", "lost_at", "member_deaths", "ran_unowned_at"),
                           "parameters", "created_at")}),
        ("Log", {"fields": ("log",)}),
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the daemon writes tasks; operators cancel them (an action)

    def has_delete_permission(self, request, obj=None):
        # A task still queued or running belongs to the daemon until it ends.
        return super().has_delete_permission(request, obj) and (
            obj is None or obj.state in Task.FINISHED_STATES)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return badge(obj.state, obj.get_state_display())

    @admin.display(description="member", ordering="member__name")
    def member_name(self, obj):
        return obj.member.name if obj.member else "-"

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.started_at and obj.finished_at:
            return seconds(obj.finished_at - obj.started_at)
        return "-"

    @admin.display(description="lateness")
    def late(self, obj):
        return seconds(obj.lateness)

    @admin.display(description="captured log")
    def log(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        text = obj.log_text()
        note = ""
        if obj.state in Task.UNFINISHED_STATES:
            note = f"The task is {obj.state}: reload the page for newer output."
        return render_to_string("partials/task_log.html", {"text": text, "note": note})

    @admin.action(description="Cancel the task", description_plural="Cancel selected tasks",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def cancel_tasks(self, request, queryset):
        tasks = list(queryset.select_related("job"))
        actor = actor_of(request)
        done = sum(t.request_cancel(f"by {actor} in the admin", actor) for t in tasks)
        report(request, done, len(tasks) - done, "task", "cancelled or asked to stop",
               "finished")


@admin.register(MisfireRecord)
class MisfireRecordAdmin(ReadOnlyAdmin):
    list_display = ("id", "schedule", "cluster", "first_fire_at", "last_fire_at", "fire_count",
                    "policy", "reason", "member_name", "decided_at")
    list_filter = ("cluster", "policy", "reason")
    search_fields = ("schedule__job__name", "reason")
    list_select_related = ("schedule__job", "cluster", "member")
    date_hierarchy = "decided_at"
    show_full_result_count = False

    @admin.display(description="member", ordering="member__name")
    def member_name(self, obj):
        return obj.member.name if obj.member else "-"


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "cluster", "kind", "actor", "member_name", "job",
                    "message")
    list_filter = ("cluster", "kind")
    search_fields = ("message", "actor")
    list_select_related = ("cluster", "member", "job")
    date_hierarchy = "created_at"
    ordering = ("-id",)
    show_full_result_count = False

    @admin.display(description="member", ordering="member__name")
    def member_name(self, obj):
        return obj.member.name if obj.member else "-"


# ---------------------------------------------------------------------------- chains, orders


class ChainNodeFormSet(BaseInlineFormSet):
    """The nodes being saved must form a sound graph (check_chain_graph)."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return  # each form shows its own errors first
        nodes = []
        for form in self.forms:
            data = form.cleaned_data
            if not data or (self.can_delete and self._should_delete_form(form)):
                continue  # an untouched extra form, or a node being deleted
            job = data.get("job")
            if job is not None and self.instance.cluster_id and \
                    job.cluster_id != self.instance.cluster_id:
                raise ValidationError(f"Node '{data['state']}': job '{job.name}' belongs to "
                                      "another cluster than this chain.")
            nodes.append({"state": data["state"], "job": job,
                          "next_state": data.get("next_state") or "",
                          "error_state": data.get("error_state") or ""})
        problems = check_chain_graph(nodes)
        if problems:
            raise ValidationError(problems)
        # A saved node deleted or renamed: no order that is not done may be left at it, or
        # start (reset, a repeating order's next run) or end there.
        kept = {node["state"] for node in nodes}
        gone = {form.initial["state"] for form in self.initial_forms
                if form.initial.get("state")} - kept
        using = self.instance.orders_using(gone) if self.instance.pk else []
        if using:
            raise ValidationError(
                "A node whose state orders that are not done still use cannot be deleted or "
                f"renamed: {'; '.join(using)}. Move or remove those orders first (or let them "
                "end); nothing was saved.")


class ChainNodeInline(admin.TabularInline):
    model = ChainNode
    formset = ChainNodeFormSet
    extra = 1
    fields = ("position", "state", "job", "next_state", "error_state", "action")

    def get_readonly_fields(self, request, obj=None):
        # A saved chain's nodes are stopped, skipped or made active again by an operator
        # action (the node list's actions), which records an event; here only when added.
        return ("action",) if obj is not None and obj.pk else ()

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)
        return label_jobs_with_cluster(formfield) if db_field.name == "job" else formfield


# Operator actions on chains, nodes and orders go through scheduler/orderactions.py (every door
# does): all or nothing, each recorded in the event log with the user's name.

SHOW_EACH = 10  # up to this many rows, each one's outcome is said; beyond, counts


def run_actions(request, action: str, targets: list, noun: str, **args) -> bool:
    """Do `action` to every target in one transaction; one refusal and nothing is changed
    (the message says which and why). True when it was done."""
    actor = actor_of(request)
    outcomes = []
    try:
        with transaction.atomic():
            for target in targets:
                try:
                    outcomes.append(orderactions.perform(action, target, actor, **args))
                except ValidationError as exc:
                    messages.error(request, f"{orderactions.describe(target)}: "
                                            f"{' '.join(exc.messages)} Nothing was changed.")
                    raise
    except ValidationError:
        return False
    if len(outcomes) <= SHOW_EACH:
        for outcome in outcomes:
            messages.add_message(request, messages.SUCCESS if outcome.changed
                                 else messages.WARNING, outcome.message)
    else:
        done = sum(outcome.changed for outcome in outcomes)
        messages.add_message(request, messages.SUCCESS if done else messages.WARNING,
                             f"{plural(len(outcomes), noun)}: {done} changed by "
                             f"“{action}”, {len(outcomes) - done} already so.")
    return True


def action_field_name(request) -> str:
    """The name the admin's action form posted its action under (list or object page)."""
    on_page = f"{ActionLocation.CHANGE_FORM.value}-action"
    return on_page if on_page in request.POST else "action"


def unfinished_orders(orders) -> list[str]:
    """Orders not done (waiting, running a step, suspended), each named with where it is."""
    return [f"order {o.chain.name}/{o.order_id} ({o.get_status_display()} at {o.state})"
            for o in orders.exclude(status__in=Order.DONE_STATUSES).select_related("chain")
            .order_by("chain__name", "order_id")]


# Deleted with their chain: its nodes, and its orders once they are all done (finished or
# failed). The permission asked is the user's model permission (the nodes' and orders' own
# admin pages delete nothing: the chain's page edits nodes, the Remove action removes orders).
WITH_THE_CHAIN = {ChainNode: "scheduler.delete_chainnode", Order: "scheduler.delete_order"}


@admin.register(JobChain)
class JobChainAdmin(OperatorActions, ActionsAdmin):
    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("name", "cluster", "title", "distributed", "stopped", "node_count",
                    "order_count")
    list_filter = ("cluster", "distributed", "stopped")
    search_fields = ("name", "title")
    list_select_related = ("cluster",)
    inlines = [ChainNodeInline]
    actions = ["stop_chains", "start_chains"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            nodes_n=Count("nodes", distinct=True), orders_n=Count("orders", distinct=True))

    def get_readonly_fields(self, request, obj=None):
        # Its nodes' jobs belong to its cluster. Stopping is an operator action (an event).
        return ("cluster", "stopped", "node_actions") if obj else ("stopped",)

    def get_deleted_objects(self, objs, request):
        """A chain (its delete page, or the delete action on the list) is refused while it
        has orders that are not done: each is listed as what protects the chain; they must
        be removed first (or run to their end). A running step's task would else lose its
        order under it, and a waiting one vanish with no event."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for model, perm in WITH_THE_CHAIN.items():
            if request.user.has_perm(perm):
                perms_needed.discard(model._meta.verbose_name)
        chains = [obj.pk for obj in objs]
        return deleted, counts, perms_needed, [
            *protected, *unfinished_orders(Order.objects.filter(chain__in=chains))]

    def delete_model(self, request, obj):
        self.delete_queryset(request, JobChain.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        # Checked again at the moment of deleting (an order may have been added meanwhile).
        with transaction.atomic():
            left = unfinished_orders(Order.objects.filter(chain__in=queryset))
            if left:
                raise PermissionDenied("Orders not done: " + ", ".join(left))
            super().delete_queryset(request, queryset)

    @admin.display(description="nodes", ordering="nodes_n")
    def node_count(self, obj):
        return obj.nodes_n

    @admin.display(description="orders", ordering="orders_n")
    def order_count(self, obj):
        return obj.orders_n

    @admin.display(description="stop or skip nodes")
    def node_actions(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        address = reverse("admin:scheduler_chainnode_changelist") + f"?chain__id__exact={obj.pk}"
        return format_html('<a href="{}">The nodes of {}, with their actions</a>', address,
                           obj.name)

    @admin.action(description="Stop the chain (no order moves)",
                  description_plural="Stop selected chains", permissions=["operate"],
                  location=LIST_AND_PAGE)
    def stop_chains(self, request, queryset):
        run_actions(request, "stop", list(queryset), "chain")

    @admin.action(description="Start the chain", description_plural="Start selected chains",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def start_chains(self, request, queryset):
        run_actions(request, "start", list(queryset), "chain")


@admin.register(ChainNode)
class ChainNodeAdmin(OperatorActions, ActionsAdmin):
    """Nodes are defined in their chain's page; here an operator stops or skips them."""

    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("state", "chain", "cluster", "job", "next_state", "error_state",
                    "action_badge")
    list_filter = ("action", "chain__cluster", "chain")
    search_fields = ("state", "chain__name")
    list_select_related = ("chain__cluster", "job")
    actions = ["set_active", "set_stopped", "set_skipped"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the chain's page edits nodes

    def has_delete_permission(self, request, obj=None):
        return False  # the chain's page deletes nodes (checking the graph)

    @admin.display(description="cluster", ordering="chain__cluster__name")
    def cluster(self, obj):
        return obj.chain.cluster.name

    @admin.display(description="action", ordering="action")
    def action_badge(self, obj):
        return badge(obj.action)

    def _set(self, request, queryset, action: str):
        run_actions(request, action, list(queryset.select_related("chain")), "node")

    @admin.action(description="Set active", description_plural="Set selected nodes active",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def set_active(self, request, queryset):
        self._set(request, queryset, "active")

    @admin.action(description="Stop (orders wait here)",
                  description_plural="Stop selected nodes (orders wait there)",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def set_stopped(self, request, queryset):
        self._set(request, queryset, "stopped")

    @admin.action(description="Skip (orders pass through)",
                  description_plural="Skip selected nodes (orders pass through)",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def set_skipped(self, request, queryset):
        self._set(request, queryset, "skipped")


def repeat_arguments(order: Order) -> dict:
    """The admin's repeat fields as Order.add takes them (a cron or an interval, not a kind):
    the kind chosen decides which of the two counts (clean() refused a mismatch)."""
    if order.repeat_kind == Order.Repeat.CRON:
        return {"cron": order.cron, "timezone": order.timezone}
    if order.repeat_kind == Order.Repeat.INTERVAL:
        return {"interval_seconds": order.interval_seconds, "timezone": order.timezone}
    return {}


@admin.register(Order)
class OrderAdmin(OperatorActions, ActionsAdmin):
    class Media:
        css = {"all": ["scheduler/admin.css"]}  # state badges (STYLE)

    list_display = ("order_id", "chain", "cluster", "state", "status", "priority", "member_name",
                    "updated_at")
    list_filter = ("status", "chain__cluster", "chain")
    search_fields = ("order_id", "title", "chain__name")
    list_select_related = ("chain__cluster", "member")
    formfield_overrides = DATA_MAP_OVERRIDES
    fields = ("chain", "order_id", "title", "parameters", "priority", "initial_state",
              "end_state", "repeat_kind", "cron", "timezone", "interval_seconds",
              "next_start_at", "runs", "state", "status", "waiting", "member", "version",
              "created_at", "updated_at", "steps", "order_events")
    # The daemon moves orders; an operator moves them with the actions (each an event).
    readonly_fields = ("next_start_at", "runs", "state", "status", "waiting", "member",
                       "version", "created_at", "updated_at", "steps", "order_events")
    actions = ["suspend_orders", "resume_orders", "reset_orders", "move_orders",
               "remove_orders"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (("chain",) if obj else ())

    def has_delete_permission(self, request, obj=None):
        # No plain delete (the delete page, the delete action): it would take a running
        # order from under its step's task, with no event. The Remove action is the door.
        return False

    def get_fields(self, request, obj=None):
        if obj is None:  # what an order is added with
            return ("chain", "order_id", "title", "parameters", "priority", "initial_state",
                    "end_state", "repeat_kind", "cron", "timezone", "interval_seconds")
        return self.fields

    def save_model(self, request, obj, form, change):
        if change:
            # Only the fields changed (the nodes move the order meanwhile), with its version
            # bumped (a claim that read the row before guards its update by the version it
            # read: it takes the order again, as it is now) and an event naming the user.
            fields = list(form.changed_data)
            if not fields:
                return
            with transaction.atomic():
                obj.version = F("version") + 1
                save_changed(obj, form, change, also=["version"])
                obj.refresh_from_db(fields=["version"])
                eventlog.order_changed(obj, fields, actor_of(request))
            return
        # A new order is added through Order.add (its event names the user).
        added = orderactions.add_order(
            obj.chain, obj.order_id, actor=actor_of(request), title=obj.title,
            parameters=obj.parameters, priority=obj.priority,
            initial_state=obj.initial_state, end_state=obj.end_state,
            **repeat_arguments(obj))
        obj.pk = added.pk
        obj._state.adding = False

    @admin.display(description="cluster", ordering="chain__cluster__name")
    def cluster(self, obj):
        return obj.chain.cluster.name

    @admin.display(description="member", ordering="member__name")
    def member_name(self, obj):
        return obj.member.name if obj.member else "-"

    @admin.display(description="why it waits")
    def waiting(self, obj):
        return obj.waiting_reason() or "-" if obj and obj.pk else "-"

    @admin.display(description="steps")
    def steps(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        return render_to_string("partials/order_steps.html", {
            "steps": orderactions.order_steps(obj), "task_url_name": "admin:scheduler_task_change",
            "display_zone": "UTC"})

    @admin.display(description="events")
    def order_events(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        from scheduler.console.views.chains import order_events

        events = list(order_events(obj))
        if not events:
            return "-"
        return format_html(
            '<table class="order-events"><thead><tr><th>when (UTC)</th><th>kind</th>'
            "<th>who</th><th>door</th><th>what</th><th>reason</th></tr></thead><tbody>{}"
            "</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                                 "<td>{}</td></tr>",
                             ((short_time(e.created_at), e.kind, e.actor or "-",
                               e.source or "-", e.message, e.reason or "-") for e in events)))

    def _do(self, request, queryset, action: str, **args):
        orders = list(queryset.select_related("chain"))
        run_actions(request, action, orders, "order", **args)

    @admin.action(description="Suspend the order", description_plural="Suspend selected orders",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def suspend_orders(self, request, queryset):
        self._do(request, queryset, "suspend")

    @admin.action(description="Resume the order", description_plural="Resume selected orders",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def resume_orders(self, request, queryset):
        self._do(request, queryset, "resume")

    @admin.action(description="Reset the order to its initial state",
                  description_plural="Reset selected orders to their initial state",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def reset_orders(self, request, queryset):
        self._do(request, queryset, "reset")

    @admin.action(description="Remove the order", description_plural="Remove selected orders",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def remove_orders(self, request, queryset):
        orders = list(queryset.select_related("chain"))
        if run_actions(request, "remove", orders, "order") and \
                action_field_name(request) != "action":
            # From the order's own page: it may be gone, so back to the list.
            return HttpResponseRedirect(reverse("admin:scheduler_order_changelist"))
        return None

    @admin.action(description="Move the order to a state…",
                  description_plural="Move selected orders to a state…",
                  permissions=["operate"], location=LIST_AND_PAGE)
    def move_orders(self, request, queryset):
        """An intermediate page asks for the state (one of the chain's); then all move."""
        orders = list(queryset.select_related("chain"))
        chains = {order.chain_id for order in orders}
        if len(chains) != 1:
            messages.error(request, "Orders of one chain at a time can be moved (they were of "
                                    f"{len(chains)} chains); nothing was changed.")
            return None
        chain = orders[0].chain
        states = orderactions.states_in_graph_order(chain)
        if "apply" in request.POST:
            run_actions(request, "move", orders, "order", state=request.POST.get("state", ""))
            return None
        return TemplateResponse(request, "admin/scheduler/order/move_orders.html", {
            **self.admin_site.each_context(request),
            "title": f"Move {plural(len(orders), 'order')} of chain {chain.name}",
            "opts": self.opts, "orders": orders, "chain": chain, "states": states,
            "action_field": action_field_name(request),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        })
