"""Settings of the demo project: embedded defaults, Postgres/Redis when the environment says so."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable: 1/0 (also true/false, yes/no, on/off); unset or empty
    is `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0, not {value!r}")


# DJANGO_DEBUG=0 is production (the Dockerfile sets it): then nothing falls back to a
# development value. The environment variables are listed in docs/deploy.md.
DEBUG = env_flag("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set, and DJANGO_DEBUG=0 uses no fallback key. Set it "
            "to a long random value, the same for every worker, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = "dev-only-not-secret"
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
    if host.strip()
]

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
    # Static files (the admin's CSS) under daphne, DEBUG on or off: see STATIC_ROOT.
    "whitenoise.middleware.WhiteNoiseMiddleware",
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

# DATABASE_URL selects Postgres (production, tests); without it the demo runs on SQLite,
# unless DEBUG is off: a production process must name its database (sqlite:////abs/path
# chooses SQLite on purpose), not write to a file inside its container.
if not DEBUG and not os.environ.get("DATABASE_URL"):
    raise ImproperlyConfigured(
        "DATABASE_URL is not set, and DJANGO_DEBUG=0 does not fall back to SQLite. Set it, "
        "e.g. postgres://user:password@db-host:5432/app"
    )
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
    # Prometheus metrics at /metrics: MYKO_METRICS=1 (README, "Operations").
    "METRICS": env_flag("MYKO_METRICS", False),
}

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files are served by WhiteNoise's middleware (the admin's CSS and JavaScript; daphne
# serves none itself). DEBUG on: straight from the apps, nothing to collect. DEBUG off:
# from STATIC_ROOT, filled by `manage.py collectstatic` (the Dockerfile runs it at build),
# with gzip copies. Not the manifest storage: a forgotten collectstatic should cost the
# admin its styles, not every admin page a 500.
STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# HTTPS. With DEBUG off every one of these is on (`manage.py check --deploy` is clean), and
# each has an environment variable to change it (docs/deploy.md, "Settings"). TLS ends at
# the proxy in front; daphne's --proxy-headers (the Dockerfile's) or
# DJANGO_SECURE_PROXY_SSL_HEADER=1 tells Django a request came over HTTPS.
SECURE_SSL_REDIRECT = env_flag("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Health probes come over plain HTTP from inside the network (Docker's HEALTHCHECK, a load
# balancer's checks): they are answered, not redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$"]
SESSION_COOKIE_SECURE = env_flag("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# One hour to start with, as Django's deployment checklist advises: raise it to a year
# (31536000) once HTTPS is known to work for the host and its subdomains. `preload` only
# marks the header; a host is preloaded when someone submits it (which needs a year).
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS") or (0 if DEBUG else 3600))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_flag("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
if env_flag("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that sets X-Forwarded-Proto itself, overwriting the client's.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Origins allowed to POST (the admin's forms) besides the request's own scheme and host,
# e.g. https://app.example.com when the proxy in front changes the host or port.
CSRF_TRUSTED_ORIGINS = [
    origin.strip()
    for origin in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
    if origin.strip()
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"myko_django": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
