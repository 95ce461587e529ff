"""The shipped emoji model (``load("emoji")``): the demo's networks, data and settings, trained longer.

    python train.py --config configs/emoji_shipped.py --workdir runs/emoji_shipped

Differences from ``configs/emoji.py``: 2,000 steps with the paper's schedule (constant rate, then linear decay
to 0 from the half-way point). Like the demo it uses half the paper's cycle weight (5): at the paper's 10 the same
run's A->B translations were busier and kept less of their input (``docs/demo.md``, the shipped model's
section). The run, its machine, wall time and scores are in ``ugatit_jax/weights/emoji/MODEL_CARD.md``.
"""

from ugatit_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "emoji.py")
    c.iterations = 2000
    c.decay_flag = True
    c.sample_every = 500
    c.eval_every = 500
    c.checkpoint_every = 250
    return c
