"""The asyncio Python client (`connect`); it needs nothing of the server but `wire`."""

from myko_django.client.api import (
    DEFAULT_MAX_SIZE,
    Client,
    ClientClosed,
    CommandFailed,
    ConnectionLost,
    MykoError,
    Query,
    QueryFailed,
    Report,
    ReportFailed,
    connect,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Client",
    "ClientClosed",
    "CommandFailed",
    "ConnectionLost",
    "MykoError",
    "Query",
    "QueryFailed",
    "Report",
    "ReportFailed",
    "connect",
]
