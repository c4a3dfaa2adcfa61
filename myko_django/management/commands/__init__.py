"""The myko management commands."""
