"""worldstream.data.ingest."""
