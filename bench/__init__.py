"""`make bench`: speed and memory figures, each beside its reference measured in the same run."""
