"""tools: the ``crisscross`` command line, the demo-clip generator and the benchmarks."""
