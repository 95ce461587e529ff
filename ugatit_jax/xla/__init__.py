"""How the programs are compiled once, compiled fast and run fast on XLA; nothing here changes a value.

- ``compilation_cache``: XLA's persistent cache, on for every command (and its guard for multi-process CPU runs);
- ``step_cache``: the traced train step kept on disk, so a warm start neither traces nor compiles it;
- ``memo``: the bounded in-process memo of traced models and compiled steps;
- ``jit_init``: a module's random initialisation as one compiled program; ``batched_draws`` merges its Threefry
  draws into a few hashes (the same bits);
- ``cpu_conv``: the two kinds of convolution XLA:CPU runs slowly, as matmuls (the same values).

A researcher lifting the networks (``ugatit_jax.nn``, ``ugatit_jax.models``) need not read any of it.
"""
