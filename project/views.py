"""The demo's page: the Targets, live in the browser through myko.js (README, "In the
browser"). The page is plain HTML and one module script; everything live comes over the
WebSocket, which carries this page's session cookie, so the socket's user is the one
shown here."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

PAGE_SIZE = 25  # rows per page of the Targets list


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The live Targets page. It reads nothing from the database (the rows come over the
    socket; the session is read only when the browser sends its cookie), so it answers
    while the database is down, as the readiness of a starting server is probed at `/`."""
    return render(request, "demo/index.html", {"page_size": PAGE_SIZE})
