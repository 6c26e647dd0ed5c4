"""worldstream.data."""
