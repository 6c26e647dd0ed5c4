"""worldstream.parallel."""
