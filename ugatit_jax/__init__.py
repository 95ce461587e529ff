"""ugatit-jax: U-GAT-IT and NICE-GAN in JAX/Flax NNX, numerically equal to the official PyTorch releases.

Load a trained model (a run folder or an official ``.pt``) and translate::

  from ugatit_jax import load
  model = load("runs/emoji")
  image, cam_logit, heatmap = model.translate(images, "A2B")

The model pieces are importable on their own::

  from ugatit_jax import SpectralNorm, ILN, AdaILN, CAMAttention, Generator, Discriminator, NICE
"""

# First of all: under python -m ugatit_jax.<command>, Ctrl-C while the imports below run (seconds) is one line.
from ugatit_jax.interrupts import install_while_loading

install_while_loading()

from ugatit_jax.loading import Translator, load  # noqa: E402
from ugatit_jax.models.family import FAMILIES, build_model, get_family  # noqa: E402
from ugatit_jax.models.nice import NICE, NiceDiscriminator, NiceGenerator  # noqa: E402
from ugatit_jax.models.ugatit import UGATIT, Discriminator, Generator  # noqa: E402
from ugatit_jax.nn.attention import CAMAttention  # noqa: E402
from ugatit_jax.nn.cam import class_activation_map, colorize_heatmap, overlay_heatmap  # noqa: E402
from ugatit_jax.nn.norms import ILN, AdaILN, clip_rho  # noqa: E402
from ugatit_jax.nn.spectral_norm import PowerIterationState, SpectralNorm  # noqa: E402

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
