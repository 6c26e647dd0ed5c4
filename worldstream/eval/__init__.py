"""worldstream.eval."""
