"""The console's forms for operating job chains and orders: an action with the operator's
reason, and a new order checked field by field (scheduler/orderactions.py has the checks
every door shares)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from scheduler import orderactions
from scheduler.console.forms import MAX_REASON
from scheduler.models import JobChain
from scheduler.validators import parse_parameters, text_problem

INT_LIMIT = 2**31 - 1  # Order.priority is an integer column


def clean_reason(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise forms.ValidationError(f"The reason {problem}.")
    return value


class ActionForm(forms.Form):
    """One operator action (from `actions`, orderactions' table for the target) with the
    operator's reason; a move also names its state."""

    action = forms.ChoiceField(error_messages={"required": "Choose an action."})
    state = forms.CharField(required=False, max_length=200)
    reason = forms.CharField(required=False, max_length=MAX_REASON, strip=True,
                             widget=forms.Textarea)

    def __init__(self, data=None, *, actions: dict):
        super().__init__(data)
        self.actions = actions
        self.fields["action"].choices = [(name, a.label) for name, a in actions.items()]
        self.fields["action"].error_messages["invalid_choice"] = (
            f"“%(value)s” is not an action here ({', '.join(actions)}).")

    def clean_reason(self) -> str:
        return clean_reason(self.cleaned_data["reason"])

    def clean_state(self) -> str:
        value = self.cleaned_data["state"]
        problem = text_problem(value)
        if problem:
            raise forms.ValidationError(f"The state {problem}.")
        return value

    def arguments(self) -> dict:
        action = self.actions[self.cleaned_data["action"]]
        return {"state": self.cleaned_data["state"]} if "state" in action.arguments else {}

    def problems(self) -> list[str]:
        return [message for errors in self.errors.values() for message in errors]


class AddOrderForm(forms.Form):
    """A new order of a chain: every field checked, each error shown by its field."""

    order_id = forms.CharField(label="Order id", max_length=100, strip=True,
                               help_text="Unique in the chain: letters, digits, '_', '.', ':' "
                                         "or '-'.")
    title = forms.CharField(required=False, max_length=200, strip=True)
    parameters = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                 help_text='A JSON object, such as {"day": "2026-01-31"}; '
                                           "merged over each step's job's parameters.")
    priority = forms.IntegerField(required=False, min_value=-INT_LIMIT, max_value=INT_LIMIT,
                                  help_text="Higher first (default 0).")
    initial_state = forms.ChoiceField(label="Initial state", required=False)
    # A repeating order: a cron in a zone or an interval (the model checks them as it checks a
    # job's schedule; an error is shown by its field).
    cron = forms.CharField(label="Repeat by cron", required=False, max_length=200, strip=True,
                           help_text="Optional, five fields (e.g. 0 2 * * *): the order "
                                     "starts at the next due time and, at the end of each "
                                     "run, goes back to its initial state to wait for the "
                                     "next one.")
    timezone = forms.CharField(label="Time zone", required=False, max_length=64, strip=True,
                               initial="UTC", help_text="The cron's IANA zone (default UTC).")
    interval_seconds = forms.IntegerField(
        label="Or repeat every (seconds)", required=False, min_value=-INT_LIMIT,
        max_value=INT_LIMIT, help_text="Optional: the first run is this long from now.")
    reason = forms.CharField(required=False, max_length=MAX_REASON, strip=True,
                             widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, data=None, *, chain: JobChain):
        super().__init__(data, prefix="add")
        self.chain = chain
        # Where Order.add starts an order that names no initial state: the first in graph
        # order (chaingraph), the order the states are offered in.
        states = orderactions.states_in_graph_order(chain)
        self.fields["initial_state"].choices = [
            ("", f"the first node ({states[0]})" if states else "the first node"),
            *[(s, s) for s in states]]
        self.fields["initial_state"].error_messages["invalid_choice"] = (
            f"“%(value)s” is not a state of chain {chain.name}.")

    def _text(self, name: str) -> str:
        value = self.cleaned_data[name]
        problem = text_problem(value)
        if problem:
            raise forms.ValidationError(f"This text {problem}.")
        return value

    def clean_order_id(self) -> str:
        return self._text("order_id")

    def clean_title(self) -> str:
        return self._text("title")

    def clean_cron(self) -> str:
        return self._text("cron")

    def clean_timezone(self) -> str:
        return self._text("timezone") or "UTC"

    def clean_reason(self) -> str:
        return clean_reason(self.cleaned_data["reason"])

    def clean_parameters(self) -> dict | None:
        text = self._text("parameters").strip()
        if not text:
            return None
        try:
            return parse_parameters(text)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        self.add_model_errors(ValidationError(orderactions.new_order_errors(
            self.chain, data["order_id"], **self.order_arguments())))
        return data

    def order_arguments(self) -> dict:
        data = self.cleaned_data
        return {"title": data["title"], "parameters": data["parameters"],
                "priority": data["priority"] or 0,
                "initial_state": data["initial_state"] or None,
                "cron": data["cron"], "timezone": data["timezone"] or "UTC",
                "interval_seconds": data["interval_seconds"]}

    def add_model_errors(self, exc: ValidationError) -> None:
        """A model's errors by field, on this form's fields (the rest above the form)."""
        if not hasattr(exc, "error_dict"):
            if exc.messages:
                self.add_error(None, exc.messages)
            return
        for field, messages in exc.message_dict.items():
            where = field if field in self.fields and field != NON_FIELD_ERRORS else None
            if where is None and field not in (NON_FIELD_ERRORS, "__all__"):
                messages = [f"{field.replace('_', ' ')}: {m}" for m in messages]
            self.add_error(where, messages)
