"""The training driver, ``train.py``'s alone: the loop and the small pieces it composes (the step memo, the sample
strips, the evaluation hook, TensorBoard events, stop signals). The pure step, the state, the optimisers,
parallelism and checkpoints it drives are ``ugatit_jax.train``'s."""
