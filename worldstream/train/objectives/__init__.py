"""worldstream.train.objectives."""
