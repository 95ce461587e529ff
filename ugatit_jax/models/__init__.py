"""The model families built from ``ugatit_jax.nn``: U-GAT-IT (``ugatit``)."""
