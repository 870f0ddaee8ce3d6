"""Training: the Hydra entry point and training callbacks."""
