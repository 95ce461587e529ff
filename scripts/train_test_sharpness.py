"""Are training images as sharp as test images? The high-frequency energy of a dataset's train crops against its
test images, per domain, through the pipeline's own transforms.

    python scripts/train_test_sharpness.py --config configs/emoji.py [--config.x=...] [--images 400]

Prints, per domain, ``hf_energy`` (mean absolute Laplacian of luminance, ``evaluation.metrics``) of ``--images``
training images after ``data.transforms.train_transform`` and of every test image after ``test_transform``, and
their ratio. A ratio well above 1 means the networks learn a sharper look than the test images have, so their
translations score a high ``hf_ratio`` against real test images however clean they are.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ugatit_jax.cli import UsageError, parse_config_flags  # noqa: E402


def sharpness(config, images: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """{domain: {"train": hf, "test": hf, "ratio": train / test}} of ``config``'s dataset."""
    from ugatit_jax.data import get_source
    from ugatit_jax.data.transforms import test_transform, train_transform
    from ugatit_jax.evaluation.metrics import hf_energy

    source = get_source(config)
    rng = np.random.default_rng(seed)
    out = {}
    for domain in "AB":
        train, test = getattr(source, f"train_{domain.lower()}"), getattr(source, f"test_{domain.lower()}")
        picks = rng.choice(len(train), size=min(images, len(train)), replace=False)
        crops = np.stack([train_transform(train[int(i)], rng, config.img_size, config.crop_margin) for i in picks])
        tests = np.stack([test_transform(test[i], config.img_size) for i in range(len(test))])
        a, b = float(hf_energy(crops)), float(hf_energy(tests))
        out[domain] = {"train": a, "test": b, "ratio": a / b}
    return out


PROG = "scripts/train_test_sharpness.py"


def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from ugatit_jax.cli import reported

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/emoji.py", flag_values=flag_values)
    flags.DEFINE_integer("images", 400, "training images per domain", flag_values=flag_values)

    def run() -> None:
        parse_config_flags(flag_values, [PROG, *(sys.argv[1:] if argv is None else argv)])
        if flag_values.config is None:
            raise UsageError("--config is required, e.g. --config configs/emoji.py")
        if flag_values.images < 1:
            raise UsageError(f"--images={flag_values.images}: must be at least 1")
        for domain, r in sharpness(flag_values.config, flag_values.images).items():
            print(f"{domain}: train crops {r['train']:.2f}  test images {r['test']:.2f}  ratio {r['ratio']:.2f}")

    return reported(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
