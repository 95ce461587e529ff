"""ugatit-jax: U-GAT-IT and NICE-GAN in JAX/Flax NNX, numerically equal to the official PyTorch releases.

Load a trained model (a run folder or an official ``.pt``) and translate::

  from ugatit_jax import load
  model = load("runs/emoji")
  image, cam_logit, heatmap = model.translate(images, "A2B")

The model pieces are importable on their own::

  from ugatit_jax import SpectralNorm, ILN, AdaILN, CAMAttention, Generator, Discriminator, NICE
"""

from ugatit_jax.loading import Translator, load
from ugatit_jax.models.family import FAMILIES, build_model, get_family
from ugatit_jax.models.nice import NICE, NiceDiscriminator, NiceGenerator
from ugatit_jax.models.ugatit import UGATIT, Discriminator, Generator
from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.cam import class_activation_map, colorize_heatmap, overlay_heatmap
from ugatit_jax.nn.norms import ILN, AdaILN, clip_rho
from ugatit_jax.nn.spectral_norm import PowerIterationState, SpectralNorm

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "NICE",
    "UGATIT",
    "AdaILN",
    "CAMAttention",
    "Discriminator",
    "Generator",
    "ILN",
    "NiceDiscriminator",
    "NiceGenerator",
    "PowerIterationState",
    "SpectralNorm",
    "Translator",
    "build_model",
    "class_activation_map",
    "clip_rho",
    "colorize_heatmap",
    "get_family",
    "load",
    "overlay_heatmap",
]
