"""The paper's setting: full U-GAT-IT at 256 px, batch 1, 1M iterations, on a folder dataset.

Usage: ``python train.py --config configs/default.py --config.dataset_dir=/data/selfie2anime --workdir runs/s2a``.
Every key and its meaning: ``ugatit_jax/config.py``.
"""

from ugatit_jax.config import base_config


def get_config():
    return base_config()
