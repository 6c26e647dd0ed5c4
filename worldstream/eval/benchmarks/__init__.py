"""worldstream.eval.benchmarks."""
