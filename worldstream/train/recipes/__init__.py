"""worldstream.train.recipes."""
