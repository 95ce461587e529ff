"""Sample strips: fixed train and test images of each domain translated and cycled back at chosen steps, saved
as PNG in the run folder and as TensorBoard images."""

from __future__ import annotations

import jax
import numpy as np

from ugatit_jax import data as data_lib
from ugatit_jax import run_dir
from ugatit_jax.directions import DIRECTIONS
from ugatit_jax.evaluation.visualize import save_png, strip
from ugatit_jax.inference import make_cycle_fn
from ugatit_jax.models.family import Family
from ugatit_jax.training.summaries import SummaryWriter


def spread_indices(n: int, k: int) -> list[int]:
    """``min(k, n)`` indices evenly spaced over ``range(n)``, first and last included: sorted splits (the emoji test
    split is in code point order) are then sampled across faces, objects, symbols and flags, not just the first."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def _spread_images(split, n: int, img_size: int) -> np.ndarray:
    """``n`` images spread over ``split`` (test transform); an unreadable one is replaced by the next readable."""
    return np.stack([data_lib.test_transform(split[i], img_size) for i in spread_indices(len(split), n)])


class Sampler:
    """Official-style sample strips from fixed train and test images, the same ones at every step, spread evenly
    over each split. ``family``: the run's."""

    def __init__(self, config, family: Family, source, graphdefs, workdir: str):
        n = config.num_samples
        splits = {"train": (source.train_a, source.train_b), "test": (source.test_a, source.test_b)}  # A, B
        self.images = {
            (name, direction): _spread_images(images, n, config.img_size)
            for name, pair in splits.items()
            for direction, images in zip(DIRECTIONS, pair)
        }
        self.family = family
        self.fn = make_cycle_fn(self.family, graphdefs)
        self.workdir = workdir

    def __call__(self, nets: dict, step: int, writer: SummaryWriter) -> None:
        """``nets``: ``translation_nets`` of the state at ``step``."""
        nets = jax.device_get(nets)
        for (split, direction), images in self.images.items():
            image = strip(jax.device_get(self.fn(nets, images, direction)))
            save_png(image, run_dir.sample_file(self.workdir, direction, split, step))
            writer.image(step, f"samples/{split}/{direction}", image)
