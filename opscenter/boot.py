"""Loading the settings for every entry point (manage.py, ASGI, WSGI).

A bad environment value is the operator's to fix: one line that names it and exit status 2,
not a traceback from deep inside a server's import machinery.
"""

import os
import sys


def settings_or_exit() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018  (imports the settings: checks the environment)
    except ImproperlyConfigured as exc:
        print(f"opscenter: {exc}", file=sys.stderr)
        sys.exit(2)
