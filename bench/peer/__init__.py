"""Bench-only Django app for bench/fanout.py: the write command every fan-out workload uses,
the djangochannelsrestframework peer and the bare in-process broadcast (the ceiling)."""
