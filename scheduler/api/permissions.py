"""The console's roles over HTTP methods and actions (scheduler/roles.py, console/access.py).

- reading: the scheduler's view permission (groups viewer, operator, administrator);
- operating (pause, resume, run now, cancel, order, chain and node actions):
  scheduler.operate_job;
- switching a passive cluster over: scheduler.switchover_cluster (a view's
  `action_permissions`);
- creating, changing, deleting: the model's add / change / delete permission.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from scheduler.console.access import NOT_OPERATOR, OPERATE_PERMISSION, can_view

MODEL_PERMISSIONS = {
    "create": "add",
    "update": "change",
    "partial_update": "change",
    "destroy": "delete",
}


class RolePermission(BasePermission):
    """A view lists its operator actions in `operate_actions`, and an action that needs
    another permission in `action_permissions` ({action: (permission, refusal)}); anything
    else that writes needs the model's own permission."""

    message = "Your account may not do this (it needs the viewer, operator or administrator group)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not can_view(user):
            self.message = ("Your account may not see the scheduler (it needs the viewer, "
                            "operator or administrator group).")
            return False
        action = getattr(view, "action", None)
        if action in getattr(view, "action_permissions", {}):
            permission, self.message = view.action_permissions[action]
            return user.has_perm(permission)
        if action in getattr(view, "operate_actions", ()):
            self.message = NOT_OPERATOR
            return user.has_perm(OPERATE_PERMISSION)
        if request.method in SAFE_METHODS:
            return True
        verb = MODEL_PERMISSIONS.get(action)
        queryset = getattr(view, "queryset", None)
        if verb is None or queryset is None:
            return False
        meta = queryset.model._meta
        permission = f"{meta.app_label}.{verb}_{meta.model_name}"
        self.message = f"This needs the permission {permission} (group administrator)."
        return user.has_perm(permission)
