"""worldstream.train."""
