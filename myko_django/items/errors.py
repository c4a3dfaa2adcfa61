"""The errors the items layer reports to clients; no Django needed to catch them."""


class ItemError(ValueError):
    """A wire item or id that does not fit its model; the message names the field."""


class OperationError(ValueError):
    """An unknown operation or bad parameters; the message is meant for the client."""
