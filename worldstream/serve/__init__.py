"""worldstream.serve."""
