"""What the API reads and writes. Writes are checked by the models' own full_clean (cron,
zone, interval, parameters, what a database can hold), so the API refuses what the admin and
the console refuse, with the same messages, naming the field."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils import timezone as djtz
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scheduler import timing
from scheduler.api.errors import django_errors
from scheduler.models import (
    ChainNode,
    Cluster,
    Event,
    Job,
    JobChain,
    Member,
    Order,
    Schedule,
    Task,
)
from scheduler.validators import text_problem

MAX_REASON = 500  # as the console's dialogs


class StrictCharField(serializers.CharField):
    """Text is a JSON string: a number or a boolean where text is expected is a 400."""

    default_error_messages = {"not_a_string": "Give a string, not a {kind}."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string", kind=type(data).__name__)
        return super().to_internal_value(data)


class StrictModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
    }


class StrictMixin:
    """Unknown (or read-only) fields in a body are a 400 naming them, not silently dropped."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(str(key) for key in data if key not in writable)
            if unknown:
                raise serializers.ValidationError(
                    {key[:100]: ["Unknown or read-only field."] for key in unknown[:20]})
        return super().to_internal_value(data)


def clean_text(value: str, what: str = "This text") -> str:
    problem = text_problem(value)
    if problem:
        raise serializers.ValidationError(f"{what} {problem}.")
    return value


class ModelCleanMixin(StrictMixin):
    """validate(): the instance as it would be saved goes through full_clean; create and
    update save that same instance."""

    def checked_instance(self, attrs):
        instance = copy.copy(self.instance) if self.instance is not None else self.Meta.model()
        for name, value in attrs.items():
            setattr(instance, name, value)
        self.prepare(instance)
        try:
            instance.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(django_errors(exc)) from None
        return instance

    def prepare(self, instance) -> None:
        """Fill what the model needs before full_clean (a denormalised cluster...)."""

    def validate(self, attrs):
        self._checked = self.checked_instance(attrs)
        return attrs


class ClusterSerializer(serializers.ModelSerializer):
    class Meta:
        model = Cluster
        fields = ["id", "name", "description", "mode", "lease_holder", "lease_epoch",
                  "lease_expires_at", "handover_to", "created_at"]


class MemberSerializer(serializers.ModelSerializer):
    class Meta:
        model = Member
        fields = ["id", "cluster", "name", "mode", "role", "backup_precedence", "labels",
                  "workers", "host", "ip", "pid", "version", "state", "started_at",
                  "heartbeat_at", "clock_skew_ms", "running_tasks", "stopped_at",
                  "stop_reason", "declared_dead_by"]


class JobSerializer(ModelCleanMixin, StrictModelSerializer):
    class Meta:
        model = Job
        fields = ["id", "cluster", "name", "title", "kind", "command", "working_directory",
                  "parameters", "stateful", "data_map", "timeout_seconds", "max_retries",
                  "retry_backoff_seconds", "max_parallel", "overlap_policy", "recover_lost",
                  "affinity", "executor", "celery_queue", "isolation", "paused", "created_at",
                  "updated_at"]
        # Paused is operated (pause / resume), never written; the cluster is chosen once.
        read_only_fields = ["paused", "created_at", "updated_at"]
        validators = []  # the unique name is checked by full_clean, on the field "name"

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, list | tuple):
            fields["cluster"].read_only = True
        return fields


class ScheduleSerializer(ModelCleanMixin, StrictModelSerializer):
    class Meta:
        model = Schedule
        fields = ["id", "cluster", "job", "title", "kind", "cron", "timezone",
                  "interval_seconds", "run_at", "start_at", "end_at", "misfire_policy",
                  "misfire_grace_seconds", "run_all_limit", "paused", "next_fire_at",
                  "last_fire_at", "version", "created_at", "updated_at"]
        read_only_fields = ["cluster", "paused", "next_fire_at", "last_fire_at", "version",
                            "created_at", "updated_at"]

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, list | tuple):
            fields["job"].read_only = True
        return fields

    def prepare(self, instance) -> None:
        if instance.job_id:
            instance.cluster_id = instance.job.cluster_id


class TaskSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = ["id", "cluster", "job", "schedule", "scheduled_for", "attempt", "trigger",
                  "state", "member", "not_before", "created_at", "claimed_at", "started_at",
                  "finished_at", "exit_code", "error", "parameters", "retry_of",
                  "requested_by", "cancel_reason", "order", "order_state", "order_step"]


class ChainNodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = ChainNode
        fields = ["id", "state", "job", "next_state", "error_state", "action", "position"]


class JobChainSerializer(serializers.ModelSerializer):
    nodes = ChainNodeSerializer(many=True, read_only=True)

    class Meta:
        model = JobChain
        fields = ["id", "cluster", "name", "title", "distributed", "stopped", "max_orders",
                  "created_at", "nodes"]


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "chain", "order_id", "title", "parameters", "priority",
                  "initial_state", "end_state", "state", "status", "suspend_requested",
                  "error_path", "member", "version", "step", "repeat_kind", "cron",
                  "timezone", "interval_seconds", "next_start_at", "runs", "created_at",
                  "updated_at"]


class ExecutorSupportSerializer(serializers.Serializer):
    """What one executor supports for one job kind (scheduler/executors/registry.py)."""

    executor = serializers.CharField(help_text="Job.executor: node or celery.")
    kind = serializers.CharField(help_text="Job.kind: shell, python or task.")
    runs_on = serializers.CharField(help_text="Where the work runs.")
    isolations = serializers.ListField(child=serializers.CharField(),
                                       help_text="The isolations a job may choose.")
    time_limit = serializers.BooleanField(help_text="A timeout stops the work.")
    cancel = serializers.BooleanField(help_text="A cancel stops the work.")
    live_log = serializers.BooleanField(help_text="The output reaches the log while it runs.")
    data_map = serializers.BooleanField(help_text="A run returns the data map (stateful).")
    needs = serializers.CharField(help_text="What must be configured and running.")
    note = serializers.CharField()


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ["id", "cluster", "created_at", "kind", "actor", "source", "reason",
                  "member", "job", "schedule", "task", "message", "data"]


# ------------------------------------------------------------------ action bodies


class ReasonSerializer(StrictMixin, serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, max_length=MAX_REASON,
                                   default="")

    def validate_reason(self, value: str) -> str:
        return clean_text(value, "The reason")


class RequiredReasonSerializer(ReasonSerializer):
    reason = StrictCharField(max_length=MAX_REASON)


class RunNowSerializer(ReasonSerializer):
    parameters = serializers.JSONField(required=False, default=None,
                                       help_text="Merged over the job's parameters for "
                                                 "this run.")

    def validate_parameters(self, value):
        if value is None:
            return None
        from scheduler.validators import validate_parameters

        try:
            validate_parameters(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(list(exc.messages)) from None
        return value


class MoveSerializer(ReasonSerializer):
    state = StrictCharField(max_length=100)


class NodeActionSerializer(ReasonSerializer):
    state = StrictCharField(max_length=100, help_text="The node's state (its name in the chain).")
    action = serializers.ChoiceField(
        choices=ChainNode.Action.choices,
        error_messages={"invalid_choice": "Not a node action: choose one of "
                                          f"{', '.join(ChainNode.Action.values)}."},
        help_text="active, stopped (orders wait at the node) or skipped (orders pass to its "
                  "next state without running its job).")


class SwitchoverSerializer(RequiredReasonSerializer):
    """The console's switch-over form: a reason is needed."""

    target = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=2**63 - 1,
        help_text="The standby member (id) to hand the lease to; default: the primary.")


class AddOrderSerializer(StrictMixin, serializers.Serializer):
    chain = serializers.PrimaryKeyRelatedField(queryset=JobChain.objects.all())
    order_id = StrictCharField(max_length=100)
    title = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    parameters = serializers.JSONField(required=False, default=None)
    priority = serializers.IntegerField(required=False, default=0, min_value=-(2**31),
                                        max_value=2**31 - 1)
    initial_state = StrictCharField(max_length=100, required=False, allow_blank=True,
                                          default="")
    end_state = StrictCharField(max_length=100, required=False, allow_blank=True,
                                      default="")
    cron = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    timezone = StrictCharField(max_length=64, required=False, allow_blank=True,
                                     default="UTC")
    interval_seconds = serializers.IntegerField(required=False, allow_null=True, default=None,
                                                min_value=1, max_value=2**31 - 1)
    reason = StrictCharField(required=False, allow_blank=True, max_length=MAX_REASON,
                                   default="")

    def validate_reason(self, value: str) -> str:
        return clean_text(value, "The reason")


# ------------------------------------------------------------------ the Node.js seed's shape


DURATION_RE = re.compile(r"\s*(\d{1,9})\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_INTERVAL = 2**31 - 1


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1},
                               {"type": "string", "maxLength": 200}],
                     "description": "Seconds, a duration (90s, 5m, 2h, 1d, 1w) or a cron "
                                    "expression."})
class FrequencyField(serializers.Field):
    """A number of seconds or a string (a duration or a cron expression)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | str):
            raise serializers.ValidationError("Give a number of seconds or a string.")
        if isinstance(data, int):
            if not 1 <= data <= MAX_INTERVAL:
                raise serializers.ValidationError(
                    f"A frequency is between 1 s and {MAX_INTERVAL} s.")
            return str(data)
        if len(data) > 200:
            raise serializers.ValidationError("At most 200 characters.")
        return clean_text(data)

    def to_representation(self, value):
        return value


class SeedJobSerializer(StrictMixin, serializers.Serializer):
    """The shape the Node.js distributed scheduler posts to /jobs (docs/seeds): a job and its
    schedule in one body.

    - frequency: a number of seconds, a duration ("90s", "5m", "2h", "1d", "1w"), or a
      five-field cron expression ("*/5 * * * *").
    - repeat true: run every `frequency` (an interval schedule anchored at startDate, or the
      cron); false: run once, `frequency` after startDate (or after now).
    - script: a shell command line (a shell job).
    """

    cluster = serializers.PrimaryKeyRelatedField(
        queryset=Cluster.objects.all(), required=False,
        help_text="Needed when there is more than one cluster.")
    name = StrictCharField(max_length=100)
    description = StrictCharField(max_length=200, required=False, allow_blank=True,
                                        default="")
    frequency = FrequencyField()
    startDate = serializers.DateTimeField(required=False, allow_null=True, default=None)  # noqa: N815
    script = StrictCharField()
    repeat = serializers.BooleanField(required=False, default=True)

    def validate_frequency(self, value: str):
        match = DURATION_RE.fullmatch(value)
        if match:
            seconds = int(match.group(1)) * UNIT_SECONDS[(match.group(2) or "s").lower()]
            if seconds < 1 or seconds > MAX_INTERVAL:
                raise serializers.ValidationError(
                    f"A frequency is between 1 s and {MAX_INTERVAL} s.")
            return ("interval", int(seconds))
        try:
            timing.validate_cron(value)
        except timing.TimingError as exc:
            raise serializers.ValidationError(
                f"Not a number of seconds, a duration such as 5m, or a cron expression: {exc}"
            ) from None
        return ("cron", value.strip())

    def validate(self, attrs):
        cluster = attrs.get("cluster")
        if cluster is None:
            clusters = list(Cluster.objects.all()[:2])
            if len(clusters) != 1:
                raise serializers.ValidationError(
                    {"cluster": ["Name the cluster (by id): there is not exactly one."]})
            attrs["cluster"] = clusters[0]
        kind, value = attrs["frequency"]
        job = Job(cluster=attrs["cluster"], name=attrs["name"], title=attrs["description"],
                  kind=Job.Kind.SHELL, command=attrs["script"])
        start = attrs.get("startDate")
        if kind == "cron":
            if not attrs["repeat"]:
                raise serializers.ValidationError(
                    {"repeat": ["A cron frequency repeats: give a duration to run once."]})
            schedule = Schedule(kind=Schedule.Kind.CRON, cron=value, timezone="UTC",
                                start_at=start)
        elif attrs["repeat"]:
            schedule = Schedule(kind=Schedule.Kind.INTERVAL, interval_seconds=value,
                                start_at=start)
        else:
            try:
                run_at = (start or djtz.now()) + timedelta(seconds=value)
            except OverflowError:
                raise serializers.ValidationError(
                    {"frequency": ["Too far in the future."]}) from None
            schedule = Schedule(kind=Schedule.Kind.ONCE, run_at=run_at)
        errors = {}
        try:
            job.full_clean()
        except DjangoValidationError as exc:
            mapped = {"title": "description", "command": "script"}
            errors.update({mapped.get(k, k): v for k, v in django_errors(exc).items()}
                          if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})
        schedule.job = job
        try:
            schedule.full_clean(exclude=["job"])
        except DjangoValidationError as exc:
            mapped = {"cron": "frequency", "interval_seconds": "frequency",
                      "run_at": "frequency", "start_at": "startDate",
                      "non_field_errors": "frequency"}
            for k, v in django_errors(exc).items():
                errors.setdefault(mapped.get(k, k), []).extend(v)
        if errors:
            raise serializers.ValidationError(errors)
        attrs["job"], attrs["schedule"] = job, schedule
        return attrs
