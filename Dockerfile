# One myko-django worker: the demo project under daphne, for a TLS-terminating proxy to
# front. docs/deploy.md has the topology, the environment, nginx, and several workers.
#
#   docker build -t myko-django .
#   docker run --rm --env-file prod.env myko-django python manage.py migrate --noinput
#   docker run -d --env-file prod.env -p 127.0.0.1:8000:8000 myko-django
#
# prod.env sets at least DJANGO_SECRET_KEY, DATABASE_URL and DJANGO_ALLOWED_HOSTS (the
# hosts browsers reach it by: WebSocket Origins are checked against them), and REDIS_URL
# when more than one worker runs. Settings refuse to start without the first two.
# Migrations are that one-off job, run once per release before the new workers start:
# workers never migrate.

# ---- build: the runtime dependencies into a virtualenv ------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.txt ./
COPY myko_django ./myko_django
# The package with its Redis, Postgres and metrics (MYKO_METRICS=1) extras, and what the
# demo project's settings use besides (dj-database-url, whitenoise), each at the version
# requirements.txt pins: as a constraints file it pins what is installed and installs
# nothing by itself, so its test tools stay out (pip takes no extras in a constraint,
# hence the sed).
RUN python -m venv /opt/venv \
 && sed -e 's/\[[^]]*\]//' requirements.txt > /tmp/constraints.txt \
 && /opt/venv/bin/pip install --constraint /tmp/constraints.txt \
        ".[redis,postgres,metrics]" dj-database-url whitenoise

# ---- run ----------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY manage.py ./
COPY project ./project
# Static files (the admin's) are collected into the image, /app/staticfiles, and served by
# WhiteNoise. Collecting needs settings but no database and no real key.
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-at-build-only DATABASE_URL=sqlite:///:memory: \
        python manage.py collectstatic --noinput --verbosity 0 \
 && useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin myko
USER myko

# Production settings (project/settings.py, docs/deploy.md "Settings"): DEBUG off, HTTPS
# redirect, secure cookies, HSTS. Only the loopback names are allowed until you set yours.
ENV DJANGO_DEBUG=0 DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1 PORT=8000 DAPHNE_OPTIONS=""
EXPOSE 8000
# Plain HTTP on the loopback to /healthz (200 while the process serves), with a Host that
# DJANGO_ALLOWED_HOSTS allows (project/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "project.healthcheck"]
# One daphne process per container: run one container per core (docs/deploy.md, "Workers").
# --proxy-headers: the client address and scheme come from the proxy's X-Forwarded-For and
# X-Forwarded-Proto, so Django sees HTTPS (publish the port to the proxy only). The message
# and frame limits match MYKO["MAX_MESSAGE_SIZE"] (daphne's own default is 1 MiB).
# DAPHNE_OPTIONS adds daphne options (e.g. "--ping-interval 10").
CMD ["sh", "-c", "exec daphne -b 0.0.0.0 -p \"$PORT\" --proxy-headers --websocket-max-message-size 16777216 --websocket-max-frame-size 16777216 $DAPHNE_OPTIONS project.asgi:application"]
