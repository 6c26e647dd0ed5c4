"""worldstream.diffusion."""
