"""NICE-GAN as the official release trains it: full model, ch 64, 6 AdaILN blocks, 7-layer discriminators, 256 px,
batch 1, 300k iterations (the paper reports 100k and its results use the light model: ``configs/nice_light.py``).

Usage: ``python train.py --config configs/nice.py --config.dataset_dir=/data/horse2zebra --workdir runs/h2z``.
"""

from ugatit_jax.config import base_config


def get_config():
    c = base_config()
    c.model = "nice"
    c.n_res = 6
    c.n_dis = 7
    c.iterations = 300_000
    return c
