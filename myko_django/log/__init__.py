"""The truth: the event log and every path that writes to it (capture of ORM writes, the
wire write path, commands), publication after commit, and reconciling tables with it."""
