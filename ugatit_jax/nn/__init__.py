"""The building blocks a researcher lifts: spectral norm, ILN/AdaILN, CAM attention, class activation maps.

Each module is independent of the two model families in ``ugatit_jax.models`` and of training.
"""

from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.cam import class_activation_map, colorize_heatmap, overlay_heatmap
from ugatit_jax.nn.norms import ILN, AdaILN, clip_rho
from ugatit_jax.nn.spectral_norm import PowerIterationState, SpectralNorm

__all__ = [
    "AdaILN",
    "CAMAttention",
    "ILN",
    "PowerIterationState",
    "SpectralNorm",
    "class_activation_map",
    "clip_rho",
    "colorize_heatmap",
    "overlay_heatmap",
]
