"""U-GAT-IT light: the gamma/beta MLP reads globally pooled features (10.6M-parameter generator)."""

from ugatit_jax.config import base_config


def get_config():
    c = base_config()
    c.light = True
    return c
