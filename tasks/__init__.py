"""Task harnesses for the systematic-generalization benchmarks of the papers (``python -m tasks.<name>``)."""
