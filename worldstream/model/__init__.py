"""worldstream.model."""
