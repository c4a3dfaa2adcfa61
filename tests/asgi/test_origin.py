"""The origin check compares scheme and port, not only the host (issue 13, item 11;
docs/protocol.md, "Connecting"), over the project's ASGI application."""

import pytest

from tests.support.wsclient import AsgiTransport, WsClient

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ([], True),  # no Origin: a program, not a browser page
        ([(b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000")], True),
        ([(b"host", b"localhost"), (b"origin", b"http://localhost")], True),
        ([(b"host", b"localhost"), (b"origin", b"http://localhost:80")], True),
        # Another port of the same host is another site.
        ([(b"host", b"localhost:8000"), (b"origin", b"http://localhost:9000")], False),
        ([(b"host", b"localhost"), (b"origin", b"http://localhost:8000")], False),
        # A page over http may not open the socket of the https site (and back).
        (
            [
                (b"host", b"localhost"),
                (b"x-forwarded-proto", b"https"),
                (b"origin", b"http://localhost"),
            ],
            False,
        ),
        (
            [
                (b"host", b"localhost"),
                (b"x-forwarded-proto", b"https"),
                (b"origin", b"https://localhost"),
            ],
            True,
        ),
        (
            [
                (b"host", b"localhost"),
                (b"x-forwarded-proto", b"http"),
                (b"origin", b"https://localhost"),
            ],
            False,
        ),
        ([(b"host", b"localhost"), (b"origin", b"ftp://localhost")], False),
        ([(b"host", b"localhost"), (b"origin", b"http://localhost:x")], False),
        ([(b"host", b"localhost"), (b"origin", b"null")], False),
        # A Host that ALLOWED_HOSTS does not know is refused whatever the Origin says.
        ([(b"host", b"evil.example"), (b"origin", b"http://evil.example")], False),
        # CSRF_TRUSTED_ORIGINS lists other sites' pages, scheme and port included.
        ([(b"host", b"localhost"), (b"origin", b"https://app.example.com:8443")], True),
        ([(b"host", b"localhost"), (b"origin", b"http://app.example.com:8443")], False),
        ([(b"host", b"localhost"), (b"origin", b"https://a.trusted.example")], True),
        ([(b"host", b"localhost"), (b"origin", b"http://a.trusted.example")], False),
    ],
)
async def test_origin_must_be_the_sites_own_or_trusted(asgi_app, settings, headers, accepted):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com:8443", "https://*.trusted.example"]
    transport = AsgiTransport(asgi_app, "/myko", headers)
    assert await transport.connect() is accepted
    if accepted:
        c = WsClient(transport, "json")
        await c.ping()
        await c.close()
