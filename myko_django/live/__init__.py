"""The live layer: item stores, live queries and reports, and the sequencer that feeds
them committed events in position order. Pure Python: no Django, no asyncio, no I/O."""
