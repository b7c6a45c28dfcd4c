"""A run on disk: its directory (:mod:`.run_dir`), loggers, learning curves and the state of a grid of runs."""
