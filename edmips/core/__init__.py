"""Run plumbing shared by the programs: builders from the config, config checks, the Lightning
classifier, training callbacks, the run directory and one-line errors."""
