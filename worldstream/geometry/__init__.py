"""worldstream.geometry."""
