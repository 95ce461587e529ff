"""The model families built from ``ugatit_jax.nn``: U-GAT-IT (``ugatit``) and NICE-GAN (``nice``).

Each family's container (``UGATIT``, ``NICE``) names its networks in ``NAMES`` (the official checkpoint's keys),
``GENERATORS`` and ``DISCRIMINATORS`` (what the two optimisers hold); training state and checkpoint import read
those, so they work for either family.
"""

from ugatit_jax.models.nice import NICE, NiceDiscOutput, NiceDiscriminator, NiceGenerator
from ugatit_jax.models.ugatit import UGATIT, Discriminator, Generator

__all__ = ["NICE", "UGATIT", "Discriminator", "Generator", "NiceDiscOutput", "NiceDiscriminator", "NiceGenerator"]
