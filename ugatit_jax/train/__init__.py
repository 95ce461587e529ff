"""Training: losses, optimisers, the train state, the pure jitted step, parallelism, checkpoints, the loop."""
