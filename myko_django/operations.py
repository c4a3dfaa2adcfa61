"""Where the `command`, `query` and `report` decorators used to live; they are in
`myko_django.items.operations` (or `from myko_django import command`). Kept for one release."""

from myko_django.items.operations import command, query, report

__all__ = ["command", "query", "report"]
