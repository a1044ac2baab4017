"""The files a run writes and reads: the architecture file, metrics, the selector history, and
writing any of them atomically."""
