"""ugatit-jax: U-GAT-IT in JAX/Flax NNX, numerically equal to the official PyTorch release.

The model pieces are importable on their own::

  from ugatit_jax import SpectralNorm, ILN, AdaILN, CAMAttention, Generator, Discriminator
"""

from ugatit_jax.models.ugatit import UGATIT, Discriminator, Generator
from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.cam import class_activation_map, colorize_heatmap, overlay_heatmap
from ugatit_jax.nn.norms import ILN, AdaILN, clip_rho
from ugatit_jax.nn.spectral_norm import PowerIterationState, SpectralNorm

__version__ = "0.1.0"

__all__ = [
    "AdaILN",
    "CAMAttention",
    "Discriminator",
    "Generator",
    "ILN",
    "PowerIterationState",
    "SpectralNorm",
    "UGATIT",
    "class_activation_map",
    "clip_rho",
    "colorize_heatmap",
    "overlay_heatmap",
]
