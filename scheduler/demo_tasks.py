"""Functions decorated with Django's @task (django.tasks), for jobs of kind `task`.

opscenter enqueues them on their backend (settings.TASKS: django-tasks-db in the demo) at each
due time, and `manage.py db_worker` runs them; the task row follows the result to its end.
"""

from django.tasks import task


@task
def add(a: int = 1, b: int = 2) -> dict:
    """Returns a JSON value: it ends up in the task's log."""
    return {"sum": a + b}


@task
def fail(message: str = "this task always fails") -> None:
    raise RuntimeError(message)


@task
def sleep(seconds: float = 5.0) -> float:
    import time

    time.sleep(seconds)
    return seconds
