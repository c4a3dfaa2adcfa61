"""Per worker process, async: the hub (doorbell in, gap repair and polling from the log,
feeding the engine on the event loop), the per-connection protocol state, fan-out
encoding, and the ASGI endpoint."""
