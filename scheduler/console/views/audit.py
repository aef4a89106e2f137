"""The audit log: every operator action from every door (who, when, source, reason)."""

from __future__ import annotations

from django import forms
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from scheduler.console.access import console_view, display_zone
from scheduler.console.forms import ListDateTimeField
from scheduler.console.paging import keyset_page, page_size
from scheduler.console.views import query_with
from scheduler.models import Cluster, Event

OPERATOR_KIND_CHOICES = [(kind, Event.Kind(kind).label) for kind in Event.OPERATOR_KINDS]


class AuditFilter(forms.Form):
    cluster = forms.ModelChoiceField(Cluster.objects.order_by("name"), required=False,
                                     empty_label="all clusters")
    actor = forms.CharField(required=False, max_length=150, label="Who")
    source = forms.ChoiceField(choices=[("", "any door"), *Event.Source.choices],
                               required=False, label="Door")
    kind = forms.MultipleChoiceField(choices=OPERATOR_KIND_CHOICES, required=False,
                                     widget=forms.CheckboxSelectMultiple, label="Action")
    since = ListDateTimeField(required=False, label="From")
    until = ListDateTimeField(required=False, label="To")

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["until"] < data["since"]:
            raise forms.ValidationError("“To” is before “From”.")
        return data

    def apply(self, qs):
        data = self.cleaned_data
        if data.get("cluster"):
            qs = qs.filter(cluster=data["cluster"])
        if data.get("actor"):
            qs = qs.filter(actor=data["actor"])
        if data.get("source"):
            qs = qs.filter(source=data["source"])
        if data.get("kind"):
            qs = qs.filter(kind__in=data["kind"])
        if data.get("since"):
            qs = qs.filter(created_at__gte=data["since"])
        if data.get("until"):
            qs = qs.filter(created_at__lte=data["until"])
        return qs


@console_view
@require_GET
def audit(request):
    form = AuditFilter(request.GET or None)
    with timezone.override(display_zone(request.user)):
        valid = form.is_valid() if request.GET else True
    page = None
    if valid:
        # Always the operator kinds (the partial index event_operator_actions covers them).
        qs = (Event.objects.filter(kind__in=Event.OPERATOR_KINDS)
              .select_related("cluster", "job", "task", "member", "schedule"))
        if request.GET:
            qs = form.apply(qs)
        page = keyset_page(qs, descending=True, after=request.GET.get("after"),
                           before=request.GET.get("before"),
                           size=page_size(request.GET.get("size")))
    context = {
        "nav": "audit", "form": form, "page": page,
        "next_query": query_with(request, after=page.after) if page and page.after else None,
        "prev_query": query_with(request, before=page.before) if page and page.before else None,
        "actors": (Event.objects.filter(kind__in=Event.OPERATOR_KINDS).exclude(actor="")
                   .order_by("actor").values_list("actor", flat=True).distinct()[:200]),
    }
    template = "console/audit.html#list" if request.htmx else "console/audit.html"
    return render(request, template, context, status=200 if valid else 400)
