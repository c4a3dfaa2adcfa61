"""Model <-> wire item: which models are items, how their fields travel, and the named
operations (derived and user-defined) a client can call on them."""
