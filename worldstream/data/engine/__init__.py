"""worldstream.data.engine."""
