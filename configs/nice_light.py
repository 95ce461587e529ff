"""NICE-GAN light (the model behind the paper's reported results): the gamma/beta MLP reads globally pooled codes.
Otherwise the official defaults of ``configs/nice.py``."""

from ugatit_jax.config import base_config


def get_config():
    c = base_config()
    c.model = "nice"
    c.light = True
    c.n_res = 6
    c.n_dis = 7
    c.iterations = 300_000
    return c
