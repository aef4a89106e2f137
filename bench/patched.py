"""`python -m bench.patched runscheduler ...`: a member with the prototypes named in
BENCH_PROTOTYPES swapped in (see bench/prototypes.py). For measurements only."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")

import django  # noqa: E402

django.setup()

from django.core.management import execute_from_command_line  # noqa: E402

from bench import prototypes  # noqa: E402

prototypes.apply(os.environ.get("BENCH_PROTOTYPES", ""))
execute_from_command_line(["manage.py", *sys.argv[1:]])
