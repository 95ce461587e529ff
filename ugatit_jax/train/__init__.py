"""Training's pure parts: losses, optimisers, the train state, the jitted step, parallelism, checkpoints; the loop
that drives them is ``ugatit_jax.training``."""
