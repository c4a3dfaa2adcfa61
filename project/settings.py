"""Settings of the demo project: embedded defaults, Postgres/Redis when the environment says so."""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "myko_django",
    "project.demo",
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

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

# DATABASE_URL selects Postgres (production, tests); without it the demo runs on SQLite.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers take the lock when their transaction begins and wait for it, instead of
    # failing with "database is locked" when two transactions both read, then write.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
    # A file, not :memory:, so commands on other threads see the test data.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's connection pool: requests and the myko hub's database threads take a
    # connection and hand it back, instead of opening one per request or command.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 20}

# REDIS_URL selects channels-redis; without it the in-memory layer serves one process.
# The layer is only the doorbell between workers (one member per worker process; the log
# is the truth). Redis pub/sub carries it best: bench/doorbell_layers.py measured 9x the
# send rate of the list-based RedisChannelLayer and ~1 ms instead of ~0.5 s p50 latency in
# a burst; what it does not keep while a worker is away, the worker reads from the log.
# MYKO_LAYER=core selects the list-based layer (tests use it with a tiny capacity).
if os.environ.get("REDIS_URL"):
    if os.environ.get("MYKO_LAYER", "pubsub") == "core":
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [os.environ["REDIS_URL"]],
                    "capacity": int(os.environ.get("MYKO_LAYER_CAPACITY", "10000")),
                    "expiry": 60,
                },
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
            }
        }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# A DEMO: anyone, signed in or not, may read and change Scenes and Targets (and run
# RenameTarget, see demo/myko.py). Everything else keeps the library's default: Django's
# model permissions, nothing for anonymous clients; Notes are each user's own.
MYKO = {
    "PERMISSIONS": {
        "Scene": "myko_django.permissions.AllowAny",
        "Target": "myko_django.permissions.AllowAny",
    },
}

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"myko_django": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
