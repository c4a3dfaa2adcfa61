"""The Docker image's HEALTHCHECK: exit 0 when this container's worker answers GET /healthz
with 200, 1 otherwise (`python -m project.healthcheck`).

It asks over plain HTTP on the loopback (settings exempt /healthz from the HTTPS redirect)
with a Host header that `DJANGO_ALLOWED_HOSTS` allows, so the probe passes whatever host
names the deployment serves: the first entry (".example.com" becomes "example.com", "*"
becomes "localhost").
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe_host(allowed_hosts: str) -> str:
    """A Host header that Django's ALLOWED_HOSTS check lets through."""
    first = next((h.strip() for h in allowed_hosts.split(",") if h.strip()), "localhost")
    if first == "*":
        return "localhost"
    return first.lstrip(".")


def main() -> int:
    port = os.environ.get("PORT", "8000")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/healthz",
        headers={"Host": probe_host(os.environ.get("DJANGO_ALLOWED_HOSTS", ""))},
    )
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: GET /healthz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
