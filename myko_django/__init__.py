"""myko-django: Django models as live myko items, backed by an append-only event log."""

__version__ = "0.1.0"
