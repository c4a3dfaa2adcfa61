"""The Python client's token: an `Authorization: Bearer` header on every connection, beside
the caller's own headers, and a replaced token is the one the next connection sends."""

from websockets.datastructures import Headers

from myko_django.client.api import Client


async def test_the_token_goes_in_the_authorization_header():
    assert "additional_headers" not in Client("ws://x/myko")._connect_options()
    client = Client(
        "ws://x/myko",
        token="abc",
        additional_headers={"X-Trace": "1", "authorization": "Basic old"},
    )
    headers = client._connect_options()["additional_headers"]
    assert isinstance(headers, Headers)
    assert list(headers.raw_items()) == [("X-Trace", "1"), ("Authorization", "Bearer abc")]
    client.token = "fresh"
    assert client._connect_options()["additional_headers"]["Authorization"] == "Bearer fresh"
    assert client._connect_options()["max_size"] == 16 * 1024 * 1024
