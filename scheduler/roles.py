"""Three groups an install starts with, so that operating and editing can be given apart:

- viewer: sees everything of the scheduler (its models' view permissions).
- operator: a viewer who may also operate: pause and resume jobs and schedules, run a job
  now, cancel tasks (scheduler.operate_job) and switch a passive cluster over
  (scheduler.switchover_cluster). Operating never changes what a job runs.
- administrator: every scheduler permission, editing jobs' commands included (a command is
  code that runs on every node).

Made after every migrate; permissions are only ever added to these groups, so what an
install gave them on top is kept.
"""

from __future__ import annotations

OPERATE_PERMISSIONS = ("operate_job", "switchover_cluster")


def ensure_groups(app_config, using: str = "default", **kwargs) -> None:
    """post_migrate: create or complete the groups viewer, operator and administrator."""
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission

    # The permissions of this app exist from here on whatever order the handlers run in.
    create_permissions(app_config, verbosity=0, using=using)
    mine = Permission.objects.using(using).filter(content_type__app_label=app_config.label)
    view = list(mine.filter(codename__startswith="view_"))
    operate = list(mine.filter(codename__in=OPERATE_PERMISSIONS))
    for name, permissions in (("viewer", view), ("operator", view + operate),
                              ("administrator", list(mine))):
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.add(*permissions)
