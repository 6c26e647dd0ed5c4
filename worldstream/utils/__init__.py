"""worldstream.utils: small shared helpers (atomic file writes)."""
