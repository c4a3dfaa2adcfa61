"""myko-django: Django models as live myko items, backed by an append-only event log."""


def register(model=None, *, name=None, plural=None):
    """Make an existing model an item (see registry.register); usable as a decorator."""
    from .registry import register as do_register

    return do_register(model, name=name, plural=plural)


__version__ = "0.1.0"
