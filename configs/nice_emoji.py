"""NICE-GAN on the embedded emoji set: the U-GAT-IT demo's settings (``configs/emoji.py``) for the other family.

The same data, size, batch, learning rate, crop margin, schedule and length as the U-GAT-IT demo, so the two
families can be compared number for number on the same 389 held-out pairs. What differs from NICE-GAN's official
flags, and why:

- ``n_dis`` 6 instead of 7: NICE-GAN's global head has ``n_dis - 2`` stride-2 convolutions, so at 64 px the
  official 7 would shrink it below one pixel (6 leaves 4 x 4 -> 2 x 2 logits; ``config.validate`` says so).
- ``n_res`` 4 instead of 6: the U-GAT-IT demo's depth, inside the same time budget.
- 64 px, light, ch 16, batch 4, 600 iterations at a constant lr 2e-4, crop margin 8: as ``configs/emoji.py``
  explains.
"""

from ugatit_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "emoji.py")
    c.model = "nice"
    c.n_dis = 6
    return c
