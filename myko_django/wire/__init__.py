"""Everything that crosses the socket: event names, the envelope, codecs, naming.

No Django and no asyncio here; the server and the Python client both build on it.
"""
