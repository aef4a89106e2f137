"""Settings for opscenter, read from the environment with defaults that work out of the box.

The embedded default is an SQLite file in WAL mode next to the project; set DATABASE_URL
(for example postgres://postgres@127.0.0.1:5432/opscenter) to use PostgreSQL.

Every value is checked where it is read: a bad one raises ImproperlyConfigured naming the
variable, the value and what is allowed, and manage.py prints that one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from scheduler.env import (
    env_bool,
    env_int,
    env_networks,
    env_number,
    env_str,
    install_secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# Off unless asked for: a debug page shows settings and environment to whoever triggers it.
DEBUG = env_bool("DEBUG", False)
# Runtime files of this install (the secret key; see OPSCENTER_SQLITE_PATH for the database).
VAR_DIR = Path(env_str("OPSCENTER_VAR_DIR", "") or BASE_DIR / "var")
SECRET_KEY = os.environ.get("SECRET_KEY") or install_secret_key(VAR_DIR)
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]

# Served over TLS (directly or by a proxy that terminates it): secure cookies, redirect plain
# HTTP, and HSTS. includeSubDomains and preload commit a whole domain (and browsers' built-in
# lists) to HTTPS for good: that is the domain owner's call, not this app's, so they stay off
# and their reminders are silenced.
HTTPS = env_bool("OPSCENTER_HTTPS", False)
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = env_int("OPSCENTER_HSTS_SECONDS", 31_536_000, 0, 63_072_000)
    SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]
if env_bool("OPSCENTER_BEHIND_PROXY", False):
    # Only behind a proxy that sets this header itself: a client could send it otherwise.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    # Not "daphne": as an app it imports Twisted into every process, nodes included (+25 MB
    # each); the console is served by the daphne command (./run demo), not runserver.
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and Redoc for /api/docs/ and /api/redoc/, served from here (no CDN).
    "drf_spectacular_sidecar",
    # django.tasks' database backend (django-tasks-db): the queue of jobs of kind `task` in the
    # demo; its worker is `manage.py db_worker`. It has migrations of its own.
    "django_tasks_db",
    "scheduler",
]

# Django's task framework (django.tasks): where a job of kind `task` is enqueued. The demo's
# backend is the database (the default database, so no broker); a project that uses opscenter
# names its own backends here and its @task functions pick one with backend="...".
TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend"},
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's CSS) from the web process itself, with DEBUG off too.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # The admin lists' filters from the URL: values the database cannot take get a message.
    "scheduler.adminfilters.AdminListFilterGuard",
]

ROOT_URLCONF = "opscenter.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "scheduler.console.access.console_context",
            ],
        },
    },
]

WSGI_APPLICATION = "opscenter.wsgi.application"
# The console: HTTP and its websockets (scheduler/console/routing.py) in one ASGI process.
ASGI_APPLICATION = "opscenter.asgi.application"
# Pushes go from the relay in each console process to that process's own browsers, so the
# in-memory layer is enough for one process; several console processes behind a balancer
# share Redis (OPSCENTER_REDIS_URL) so an action's reply reaches whichever process holds
# the socket.
REDIS_URL = env_str("OPSCENTER_REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                  "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

SQLITE_PATH = env_str("OPSCENTER_SQLITE_PATH", str(BASE_DIR / "var" / "opscenter.sqlite3"))
DATABASE_URL = os.environ.get("DATABASE_URL")
if DATABASE_URL is not None and not DATABASE_URL.strip():
    # An error, not the embedded default: an emptied variable is a broken deployment far more
    # often than a wish, and a node on a private SQLite would fire the cluster's jobs again.
    raise ImproperlyConfigured("DATABASE_URL is empty: unset it for the embedded SQLite, or give "
                               "a URL such as postgres://user@host:5432/name")
try:
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL or f"sqlite:///{SQLITE_PATH}",
                                         conn_max_age=None)
    }
except ValueError as exc:  # never echo the URL: it may hold a password
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL ({exc}): use e.g. "
                               "postgres://user@host:5432/name") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several node processes share one file: WAL lets readers run beside the writer,
    # IMMEDIATE takes the write lock at BEGIN so a claim never fails half-way on upgrade,
    # and the busy timeout makes a writer wait its turn instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (node processes started by tests open it too), one per test run.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-{os.getpid()}.sqlite3")}
    # A long-lived connection per process; a daemon closes and reopens it on errors.
    DATABASES["default"]["CONN_MAX_AGE"] = None
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
try:
    ZoneInfo(TIME_ZONE)
except (ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE={TIME_ZONE!r} is not a time zone: use an IANA name "
                               "such as UTC or Europe/Berlin.") from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves the files where the finders find them (the apps' static/ and ours), so
# neither the demo nor a deployment needs a collectstatic step. A deployment whose proxy
# serves them instead sets STATIC_ROOT and runs collectstatic.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = env_str("STATIC_ROOT", "") or None

# The REST API (scheduler/api/): session (the console's login) or token
# (`manage.py drf_create_token <user>`); the console's roles (api/permissions.py); JSON errors
# that name the field (api/errors.py); bounded pages.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous request gets 401 with a WWW-Authenticate header.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["scheduler.api.permissions.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "scheduler.api.pagination.Pagination",
    "DEFAULT_PARSER_CLASSES": ["scheduler.api.errors.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "scheduler.api.errors.handle",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "opscenter API",
    "DESCRIPTION": "Clusters, members, jobs, schedules, tasks, job chains, orders and events "
                   "of the opscenter scheduler. Every change is recorded in the event log "
                   "with the source \"api\".",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema is public (it says what exists, not what is in it).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs pages load nothing from the internet: Swagger UI and Redoc are static files of
    # drf_spectacular_sidecar (served by WhiteNoise as ours), Redoc's fonts are the
    # browser's own (templates/api/redoc.html), and Swagger UI sends the schema to no online
    # validator.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "console:login"

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
if LOG_LEVEL.strip().upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a log level: use DEBUG, INFO, "
                               "WARNING, ERROR or CRITICAL.")
# plain: as always; json: one object per line with time, level, logger, message and the
# cluster, member, job and task a line is about where known (scheduler/ops/logcontext.py).
LOG_FORMAT = env_str("OPSCENTER_LOG_FORMAT", "plain").strip().lower() or "plain"
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"OPSCENTER_LOG_FORMAT={LOG_FORMAT!r} is not a log format: use "
                               "plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "scheduler.ops.logcontext.ContextFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "scheduler.ops.logcontext.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL.strip().upper()},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# The scheduler's own knobs; the daemon's options override them per process.
OPSCENTER = {
    "HEARTBEAT_INTERVAL": env_number("heartbeat_interval", 1.0),
    "DEAD_AFTER": env_number("dead_after", 5.0),
    "TAKEOVER_STAGGER": env_number("takeover_stagger", 1.0),
    "WORKERS": env_number("workers", 100),
    "STOP_GRACE": env_number("stop_grace", 30.0),
    "LOG_LIMIT_BYTES": env_number("log_limit_bytes", 1_000_000),
    "TASK_RETENTION_DAYS": env_number("task_retention_days", 30),
    "EVENT_RETENTION_DAYS": env_number("event_retention_days", 30),
    "CELERY_LEASE_TIMEOUT": env_number("celery_lease_timeout", 10.0),
    "CELERY_START_TIMEOUT": env_number("celery_start_timeout", 300.0),
}

# The console's /metrics (scheduler/ops/views.py): a scrape is let in from these client
# addresses or networks (comma-separated, REMOTE_ADDR: behind a proxy, the proxy's), or with
# `Authorization: Bearer <OPSCENTER_METRICS_TOKEN>` when that is set; else 403.
METRICS_ALLOW = env_networks("OPSCENTER_METRICS_ALLOW", "127.0.0.1,::1")
METRICS_TOKEN = env_str("OPSCENTER_METRICS_TOKEN", "").strip()
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("OPSCENTER_METRICS_TOKEN is too short: use at least 16 "
                               "characters (e.g. python3 -c 'import secrets; "
                               "print(secrets.token_urlsafe())').")
