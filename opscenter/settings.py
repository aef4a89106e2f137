"""Settings for opscenter, read from the environment with defaults that work out of the box.

The embedded default is an SQLite file in WAL mode next to the project; set DATABASE_URL
(for example postgres://postgres@127.0.0.1:5432/opscenter) to use PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


DEBUG = env_bool("DEBUG", True)
# The embedded default is for one machine; a deployment sets its own key.
SECRET_KEY = env_str("SECRET_KEY", "opscenter-insecure-development-key-change-me")
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "scheduler",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
            ],
        },
    },
]

WSGI_APPLICATION = "opscenter.wsgi.application"

SQLITE_PATH = env_str("OPSCENTER_SQLITE_PATH", str(BASE_DIR / "var" / "opscenter.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{SQLITE_PATH}"), conn_max_age=None
    )
}
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
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# The scheduler's own knobs; the daemon's options override them per process.
OPSCENTER = {
    "HEARTBEAT_INTERVAL": env_float("OPSCENTER_HEARTBEAT_INTERVAL", 1.0),
    "DEAD_AFTER": env_float("OPSCENTER_DEAD_AFTER", 5.0),
    "TAKEOVER_STAGGER": env_float("OPSCENTER_TAKEOVER_STAGGER", 1.0),
    "WORKERS": env_int("OPSCENTER_WORKERS", 100),
    "STOP_GRACE": env_float("OPSCENTER_STOP_GRACE", 30.0),
    "LOG_LIMIT_BYTES": env_int("OPSCENTER_LOG_LIMIT_BYTES", 1_000_000),
    "TASK_RETENTION_DAYS": env_int("OPSCENTER_TASK_RETENTION_DAYS", 30),
    "EVENT_RETENTION_DAYS": env_int("OPSCENTER_EVENT_RETENTION_DAYS", 30),
}
