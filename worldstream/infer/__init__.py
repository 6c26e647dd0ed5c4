"""worldstream.infer."""
