"""django.tasks functions for tests of kind `task` jobs, run by a real `db_worker`."""

from __future__ import annotations

import time
from pathlib import Path

from django.tasks import task


@task
def wait_for_file(path: str, limit: float = 60.0) -> str:
    """Returns once `path` exists (at most `limit` seconds): the test says when it may end."""
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return "released"
