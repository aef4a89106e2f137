"""The API's views: permissions (permissions.RolePermission), input checks, then the same
model methods as the admin and the console, with `Actor(user, "api", reason)`."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import ProtectedError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from scheduler import eventlog, orderactions, tasklogs
from scheduler.api import serializers as s
from scheduler.api.filters import Filters
from scheduler.console.access import NOT_SWITCHER, SWITCHOVER_PERMISSION
from scheduler.eventlog import Actor
from scheduler.executors import registry
from scheduler.membership import MemberRefused, request_switchover
from scheduler.models import Cluster, Event, Job, JobChain, Member, Order, Schedule, Task

LOG_LIMIT = 256 * 1024


def actor(request, reason: str = "") -> Actor:
    return Actor(name=request.user.get_username(), source="api", reason=reason)


def body(serializer_class, request, **kwargs):
    serializer = serializer_class(data=request.data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def int_param(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.INT, description=description)


def str_param(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, description=description)


class FilteredMixin:
    """`filters`: query parameter -> (kind, lookup); checked by api.filters.Filters. An id
    in a path is digits that fit a bigint (anything else is the JSON 404 of api.urls)."""

    filters: dict = {}
    lookup_value_regex = "[0-9]{1,18}"

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "list":
            queryset = Filters(self.filters).apply(queryset, self.request.query_params)
        return queryset


CLUSTER = int_param("cluster", "Only of this cluster (id).")


SWITCHOVER_RESULT = inline_serializer("SwitchoverResult", {
    "detail": serializers.CharField(), "target": s.MemberSerializer(),
    "cluster": s.ClusterSerializer()})
REFUSED = inline_serializer("Refused", {"detail": serializers.CharField()})


@extend_schema_view(list=extend_schema(parameters=[]))
class ClusterViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Cluster.objects.order_by("id")
    serializer_class = s.ClusterSerializer
    action_permissions = {"switchover": (SWITCHOVER_PERMISSION, NOT_SWITCHER)}

    @extend_schema(request=s.SwitchoverSerializer,
                   responses={202: SWITCHOVER_RESULT, 409: REFUSED})
    @action(detail=True, methods=["post"])
    def switchover(self, request, pk=None):
        """Hand a passive cluster's lease to a standby member (default: the primary), as the
        console's and the admin's switch-over (membership.request_switchover). The active
        member hands over at its next heartbeat (202). A switch-over that is not possible
        now (not a passive cluster, the target is not a live standby member) is a 409 and
        changes nothing."""
        cluster = self.get_object()
        data = body(s.SwitchoverSerializer, request)
        target_name = None
        if data["target"] is not None:
            target = Member.objects.filter(cluster=cluster, pk=data["target"]).first()
            if target is None:
                raise ValidationError({"target": [
                    f"There is no member {data['target']} in cluster {cluster.name}."]})
            if target.state != Member.State.STANDBY:
                # A restarted member is a new row: an old row's name may be a live member's.
                return Response({"detail": f"Switch-over refused: member {target.name} "
                                           f"({target.pk}) is {target.state}: only a standby "
                                           "member can take over."}, status=409)
            target_name = target.name
        try:
            chosen = request_switchover(cluster.name, target_name,
                                        actor(request, data["reason"]))
        except MemberRefused as exc:
            return Response({"detail": f"Switch-over refused: {exc}."}, status=409)
        cluster.refresh_from_db()
        return Response({"detail": f"Switch-over to {chosen.name} requested: the active "
                                   "member hands the lease over at its next heartbeat.",
                         "target": s.MemberSerializer(chosen).data,
                         "cluster": s.ClusterSerializer(cluster).data},
                        status=status.HTTP_202_ACCEPTED)


@extend_schema_view(list=extend_schema(parameters=[
    CLUSTER, str_param("state", "Only members in this state.")]))
class MemberViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Member.objects.order_by("id")
    serializer_class = s.MemberSerializer
    filters = {"cluster": ("id", "cluster_id"), "state": ("text", "state")}


JOB_ACTION = inline_serializer("JobActionResult", {
    "changed": serializers.BooleanField(), "detail": serializers.CharField(),
    "job": s.JobSerializer()})


@extend_schema_view(
    list=extend_schema(parameters=[
        CLUSTER, str_param("name", "Name contains this."),
        OpenApiParameter("paused", OpenApiTypes.BOOL, description="Paused or not."),
        str_param("kind", "shell or python.")]),
    create=extend_schema(
        request=s.JobSerializer,
        description="A job. The Node.js seed's shape {name, description, frequency, "
                    "startDate, script, repeat} is accepted too (see SeedJobSerializer), and "
                    "creates a shell job with its schedule."),
)
class JobViewSet(FilteredMixin, viewsets.ModelViewSet):
    queryset = Job.objects.order_by("id")
    serializer_class = s.JobSerializer
    operate_actions = ("pause", "resume", "run_now")
    filters = {"cluster": ("id", "cluster_id"), "name": ("text", "name__icontains"),
               "paused": ("bool", "paused"), "kind": ("text", "kind")}

    def create(self, request, *args, **kwargs):
        if isinstance(request.data, dict) and ("frequency" in request.data
                                               or "script" in request.data):
            return self.create_from_seed(request)
        return super().create(request, *args, **kwargs)

    def create_from_seed(self, request):
        data = body(s.SeedJobSerializer, request)
        if not request.user.has_perm("scheduler.add_schedule"):
            return Response({"detail": "This needs the permission scheduler.add_schedule "
                                       "(group administrator)."}, status=403)
        job, schedule = data["job"], data["schedule"]
        with transaction.atomic():
            job.save()
            eventlog.job_created(job, actor(request))
            schedule.job = job
            schedule.cluster_id = job.cluster_id
            schedule.save(actor=actor(request))
        out = s.JobSerializer(job).data
        return Response({**out, "schedules": [s.ScheduleSerializer(schedule).data]},
                        status=status.HTTP_201_CREATED)

    def perform_create(self, serializer):
        job = serializer._checked
        with transaction.atomic():
            job.save()
            eventlog.job_created(job, actor(self.request))
        serializer.instance = job

    def perform_update(self, serializer):
        job = serializer._checked
        # Only the fields sent: a node writes a stateful job's data map meanwhile.
        with transaction.atomic():
            job.save(update_fields=[*serializer.validated_data, "updated_at"])
            eventlog.job_changed(job, list(serializer.validated_data), actor(self.request))
        serializer.instance = job

    def perform_destroy(self, instance):
        try:
            with transaction.atomic():
                eventlog.job_deleted(instance, actor(self.request))
                instance.delete()
        except ProtectedError:
            raise ValidationError(
                f"Job {instance.name} is the job of a job chain's node: remove it from the "
                "chain first.") from None

    def _operate(self, request, method: str, serializer_class, done: str, undone: str):
        job = self.get_object()
        data = body(serializer_class, request)
        changed = getattr(job, method)(actor(request, data["reason"]))
        return Response({"changed": changed,
                         "detail": f"job {job.name} {done if changed else undone}",
                         "job": s.JobSerializer(job).data})

    @extend_schema(request=s.ReasonSerializer, responses=JOB_ACTION)
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._operate(request, "pause", s.ReasonSerializer, "paused",
                             "was already paused")

    @extend_schema(request=s.ReasonSerializer, responses=JOB_ACTION)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._operate(request, "resume", s.ReasonSerializer, "resumed",
                             "was not paused")

    @extend_schema(request=s.RunNowSerializer, responses={201: s.TaskSerializer})
    @action(detail=True, methods=["post"], url_path="run-now")
    def run_now(self, request, pk=None):
        job = self.get_object()
        data = body(s.RunNowSerializer, request)
        task = job.run_now(actor(request, data["reason"]), parameters=data["parameters"])
        return Response(s.TaskSerializer(task).data, status=status.HTTP_201_CREATED)


SCHEDULE_ACTION = inline_serializer("ScheduleActionResult", {
    "changed": serializers.BooleanField(), "detail": serializers.CharField(),
    "schedule": s.ScheduleSerializer()})


@extend_schema_view(list=extend_schema(parameters=[
    CLUSTER, int_param("job", "Only of this job (id)."),
    OpenApiParameter("paused", OpenApiTypes.BOOL, description="Paused or not.")]))
class ScheduleViewSet(FilteredMixin, viewsets.ModelViewSet):
    queryset = Schedule.objects.select_related("job").order_by("id")
    serializer_class = s.ScheduleSerializer
    operate_actions = ("pause", "resume")
    filters = {"cluster": ("id", "cluster_id"), "job": ("id", "job_id"),
               "paused": ("bool", "paused")}

    def perform_create(self, serializer):
        schedule = serializer._checked
        schedule.save(actor=actor(self.request))
        serializer.instance = schedule

    def perform_destroy(self, instance):
        with transaction.atomic():
            eventlog.schedule_deleted(instance, actor(self.request))
            instance.delete()

    def perform_update(self, serializer):
        schedule = serializer._checked
        fields = {*serializer.validated_data, "updated_at"}
        if fields & set(Schedule.DEFINITION_FIELDS):
            # save() recomputes these when the definition changed (as the admin's save).
            fields |= {"anchor_at", "version", "next_fire_at"}
        schedule.save(update_fields=sorted(fields), actor=actor(self.request))
        serializer.instance = schedule

    def _operate(self, request, method: str, done: str, undone: str):
        schedule = self.get_object()
        data = body(s.ReasonSerializer, request)
        changed = getattr(schedule, method)(actor(request, data["reason"]))
        schedule.refresh_from_db()
        return Response({"changed": changed,
                         "detail": f"schedule {schedule.pk} of job {schedule.job.name} "
                                   f"{done if changed else undone}",
                         "schedule": s.ScheduleSerializer(schedule).data})

    @extend_schema(request=s.ReasonSerializer, responses=SCHEDULE_ACTION)
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._operate(request, "pause", "paused", "was already paused")

    @extend_schema(request=s.ReasonSerializer, responses=SCHEDULE_ACTION)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._operate(request, "resume", "resumed", "was not paused")


TASK_LOG = inline_serializer("TaskLogPiece", {
    "text": serializers.CharField(), "start": serializers.IntegerField(),
    "end": serializers.IntegerField(), "size": serializers.IntegerField(),
    "finished": serializers.BooleanField()})


@extend_schema_view(list=extend_schema(parameters=[
    CLUSTER, int_param("job", "Only of this job (id)."),
    str_param("state", "Only in this state (queued, running, succeeded, failed, ...)."),
    int_param("member", "Only run by this member (id)."),
    OpenApiParameter("since", OpenApiTypes.DATETIME,
                     description="Only created at or after this time (ISO 8601).")]))
class TaskViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Task.objects.order_by("-id")
    serializer_class = s.TaskSerializer
    operate_actions = ("cancel",)
    filters = {"cluster": ("id", "cluster_id"), "job": ("id", "job_id"),
               "state": ("text", "state"), "member": ("id", "member_id"),
               "since": ("datetime", "created_at__gte")}

    @extend_schema(
        parameters=[
            int_param("cursor", "The byte to read from (0: the start; a previous read's "
                                "`end` to follow the log)."),
            int_param("limit", f"At most this many bytes (default and at most {LOG_LIMIT})."),
        ],
        responses=TASK_LOG)
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        task = self.get_object()
        from scheduler.api.filters import bounded_int

        cursor = bounded_int(request.query_params, "cursor", 0, 0, 2**62)
        limit = bounded_int(request.query_params, "limit", LOG_LIMIT, 1, LOG_LIMIT)
        piece = tasklogs.read(task.pk, cursor, limit)
        return Response({"text": piece.text, "start": piece.start, "end": piece.end,
                         "size": tasklogs.size(task.pk),
                         "finished": task.state in Task.FINISHED_STATES})

    @extend_schema(request=s.RequiredReasonSerializer, responses=inline_serializer(
        "TaskCancelResult", {"changed": serializers.BooleanField(),
                             "detail": serializers.CharField(), "task": s.TaskSerializer()}))
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        task = self.get_object()
        data = body(s.RequiredReasonSerializer, request)
        changed = task.request_cancel(data["reason"], actor(request, data["reason"]))
        task.refresh_from_db()
        return Response({"changed": changed,
                         "detail": f"{task}: " + ("cancel requested" if changed
                                                  else "already finished, nothing to cancel"),
                         "task": s.TaskSerializer(task).data})


CHAIN_ACTION = inline_serializer("ChainActionResult", {
    "changed": serializers.BooleanField(), "detail": serializers.CharField(),
    "chain": s.JobChainSerializer()})
NODE_ACTION = inline_serializer("NodeActionResult", {
    "changed": serializers.BooleanField(), "detail": serializers.CharField(),
    "node": s.ChainNodeSerializer()})


@extend_schema_view(list=extend_schema(parameters=[CLUSTER]))
class JobChainViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    queryset = JobChain.objects.prefetch_related("nodes").order_by("id")
    serializer_class = s.JobChainSerializer
    operate_actions = ("stop", "start", "node_action")
    filters = {"cluster": ("id", "cluster_id")}

    def _perform(self, request, name: str):
        chain = self.get_object()
        reason = body(s.ReasonSerializer, request)["reason"]
        outcome = orderactions.perform(name, chain, actor(request, reason))
        chain.refresh_from_db()
        return Response({"changed": outcome.changed, "detail": outcome.message,
                         "chain": s.JobChainSerializer(chain).data})

    @extend_schema(request=s.ReasonSerializer, responses=CHAIN_ACTION)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        """No order of the chain starts a step or moves on its own."""
        return self._perform(request, "stop")

    @extend_schema(request=s.ReasonSerializer, responses=CHAIN_ACTION)
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._perform(request, "start")

    @extend_schema(request=s.NodeActionSerializer, responses=NODE_ACTION)
    @action(detail=True, methods=["post"], url_path="node-action")
    def node_action(self, request, pk=None):
        """Make the chain's node at `state` active, stopped (orders wait there) or skipped
        (orders pass to its next state without running its job); a running step is not
        affected. An end node is always active."""
        chain = self.get_object()
        data = body(s.NodeActionSerializer, request)
        try:
            orderactions.check_state(chain, data["state"])
        except DjangoValidationError as exc:
            raise ValidationError({"state": exc.messages}) from None
        node = chain.nodes.filter(state=data["state"]).first()
        if node is None:  # removed in the admin meanwhile
            raise NotFound(f"Chain {chain.name} has no node {data['state']} any more.")
        try:
            outcome = orderactions.perform(data["action"], node,
                                           actor(request, data["reason"]))
        except DjangoValidationError as exc:  # an end node cannot be stopped or skipped
            raise ValidationError({"action": exc.messages}) from None
        return Response({"changed": outcome.changed, "detail": outcome.message,
                         "node": s.ChainNodeSerializer(node).data})


ORDER_ACTION = inline_serializer("OrderActionResult", {
    "changed": serializers.BooleanField(), "detail": serializers.CharField(),
    "order": s.OrderSerializer(allow_null=True)})


@extend_schema_view(
    list=extend_schema(parameters=[
        int_param("chain", "Only of this job chain (id)."),
        str_param("status", "waiting, running, suspended, finished or failed.")]),
    create=extend_schema(request=s.AddOrderSerializer, responses={201: s.OrderSerializer},
                         description="Add an order to a chain (orderactions.add_order)."),
    destroy=extend_schema(description="Remove the order (as the action remove).",
                          responses={204: None}),
)
class OrderViewSet(FilteredMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
                   viewsets.ReadOnlyModelViewSet):
    queryset = Order.objects.select_related("chain").order_by("id")
    serializer_class = s.OrderSerializer
    # Adding and removing an order is operating the chain, as in the console.
    operate_actions = ("create", "destroy", "suspend", "resume", "reset", "move", "remove")
    filters = {"chain": ("id", "chain_id"), "status": ("text", "status")}

    def create(self, request, *args, **kwargs):
        data = dict(body(s.AddOrderSerializer, request))
        chain, reason = data.pop("chain"), data.pop("reason")
        order = orderactions.add_order(chain, data.pop("order_id"),
                                       actor=actor(request, reason), **data)
        return Response(s.OrderSerializer(order).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        self._perform(request, "remove", s.ReasonSerializer)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _perform(self, request, name: str, serializer_class, **args):
        order = self.get_object()
        data = dict(body(serializer_class, request))
        reason = data.pop("reason")
        outcome = orderactions.perform(name, order, actor(request, reason), **data)
        found = Order.objects.filter(pk=order.pk).first()
        return Response({"changed": outcome.changed, "detail": outcome.message,
                         "order": s.OrderSerializer(found).data if found else None})

    @extend_schema(request=s.ReasonSerializer, responses=ORDER_ACTION)
    @action(detail=True, methods=["post"])
    def suspend(self, request, pk=None):
        return self._perform(request, "suspend", s.ReasonSerializer)

    @extend_schema(request=s.ReasonSerializer, responses=ORDER_ACTION)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._perform(request, "resume", s.ReasonSerializer)

    @extend_schema(request=s.ReasonSerializer, responses=ORDER_ACTION)
    @action(detail=True, methods=["post"])
    def reset(self, request, pk=None):
        return self._perform(request, "reset", s.ReasonSerializer)

    @extend_schema(request=s.MoveSerializer, responses=ORDER_ACTION)
    @action(detail=True, methods=["post"])
    def move(self, request, pk=None):
        return self._perform(request, "move", s.MoveSerializer)

    @extend_schema(request=s.ReasonSerializer, responses=ORDER_ACTION)
    @action(detail=True, methods=["post"])
    def remove(self, request, pk=None):
        return self._perform(request, "remove", s.ReasonSerializer)


@extend_schema_view(list=extend_schema(parameters=[
    CLUSTER,
    int_param("since", "Only events after this id, oldest first (follow the log by passing "
                       "the last id seen)."),
    str_param("kind", "Only of this kind (job.paused, order.move, ...)."),
    str_param("source", "Only from this door (admin, console, cli, api, node).")]))
class EventViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Event.objects.order_by("-id")
    serializer_class = s.EventSerializer
    filters = {"cluster": ("id", "cluster_id"), "since": ("id", "id__gt"),
               "kind": ("text", "kind"), "source": ("text", "source")}

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "list" and "since" in self.request.query_params:
            queryset = queryset.order_by("id")
        return queryset


class ExecutorViewSet(viewsets.ViewSet):
    """What each executor supports for each job kind; a job that no row allows is refused
    (400 naming the field) when it is created or changed."""

    serializer_class = s.ExecutorSupportSerializer
    pagination_class = None

    @extend_schema(responses=s.ExecutorSupportSerializer(many=True))
    def list(self, request):
        return Response(s.ExecutorSupportSerializer(registry.declared(), many=True).data)
