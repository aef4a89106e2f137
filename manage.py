#!/usr/bin/env python
"""Django's command-line utility for opscenter."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018  (imports the settings: checks the environment)
    except ImproperlyConfigured as exc:
        # A bad environment value is the operator's to fix: one line that names it, no traceback.
        print(f"opscenter: {exc}", file=sys.stderr)
        sys.exit(2)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
