"""U-GAT-IT's and NICE-GAN's loss terms and totals, as the official training loops compute them.

U-GAT-IT: every discriminator output and every discriminator CAM logit gets an adversarial term (LSGAN by
default, hinge as an option); the generator adds cycle and identity L1 terms and a BCE term on its own CAM logits
(translation from the other domain -> 1, identity mapping -> 0).

NICE-GAN: each domain's one discriminator has three outputs that get adversarial terms (local and global heads,
CAM logit); the generator adds cycle L1 and reconstruction L1 (decoding a real image's own code) terms, and has no
CAM or identity terms. Means run over all elements, as torch's default ``reduction='mean'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

GAN_TYPES = ("lsgan", "hinge")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The GAN objective and the loss weights both families share; defaults are the official ones.

    A family's subclass adds its own weights; together its fields are its generator loss's keyword arguments, so
    a step builder takes one checked value instead of repeating every weight in its signature.
    """

    adv_weight: float = 1.0
    cycle_weight: float = 10.0
    gan_type: str = "lsgan"

    def __post_init__(self):
        if self.gan_type not in GAN_TYPES:
            raise ValueError(f"unknown gan_type {self.gan_type!r}; expected one of {GAN_TYPES}")

    @classmethod
    def from_config(cls, config) -> Objective:
        """The config's values of this objective's fields (run configs name them alike)."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

    def as_kwargs(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class UGATITObjective(Objective):
    identity_weight: float = 10.0
    cam_weight: float = 1000.0


@dataclasses.dataclass(frozen=True)
class NICEObjective(Objective):
    recon_weight: float = 10.0


def mse(x, target: float):
    return jnp.mean(jnp.square(x - target))


def l1(a, b):
    return jnp.mean(jnp.abs(a - b))


def bce_with_logits(logits, target: float):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def d_adversarial(real, fake, gan_type: str):
    """Discriminator term for one output (patch map or CAM logits)."""
    if gan_type == "lsgan":
        return mse(real, 1.0) + mse(fake, 0.0)
    if gan_type == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
    raise ValueError(f"unknown gan_type {gan_type!r}; expected one of {GAN_TYPES}")


def g_adversarial(fake, gan_type: str):
    if gan_type == "lsgan":
        return mse(fake, 1.0)
    if gan_type == "hinge":
        return -jnp.mean(fake)
    raise ValueError(f"unknown gan_type {gan_type!r}; expected one of {GAN_TYPES}")


def discriminator_loss(real: Mapping, fake: Mapping, *, adv_weight: float, gan_type: str = "lsgan"):
    """real/fake map each discriminator name (disGA, ...) to its (out, cam_logit, heatmap).

    Returns (total, per-term metrics).
    """
    terms = {}
    for name in ("disGA", "disLA", "disGB", "disLB"):
        tag = name[3:]  # GA, LA, GB, LB
        terms[f"d_adv_{tag}"] = d_adversarial(real[name][0], fake[name][0], gan_type)
        terms[f"d_cam_{tag}"] = d_adversarial(real[name][1], fake[name][1], gan_type)
    loss_a = adv_weight * sum(terms[f"d_{k}_{s}A"] for k in ("adv", "cam") for s in "GL")
    loss_b = adv_weight * sum(terms[f"d_{k}_{s}B"] for k in ("adv", "cam") for s in "GL")
    terms.update(d_loss_A=loss_a, d_loss_B=loss_b)
    return loss_a + loss_b, terms


def generator_loss(
    fake_dis: Mapping,
    *,
    real_a,
    real_b,
    cycle_a,
    cycle_b,
    identity_a,
    identity_b,
    cam_a2b,
    cam_b2a,
    cam_a2a,
    cam_b2b,
    adv_weight: float,
    cycle_weight: float,
    identity_weight: float,
    cam_weight: float,
    gan_type: str = "lsgan",
):
    """Generator total for both directions.

    fake_dis: discriminator outputs on the translations (disGA/disLA on B->A, disGB/disLB on A->B).
    cam_*: generator CAM logits: a2b = genA2B(real A), b2a = genB2A(real B) (translations, target 1);
    a2a = genB2A(real A), b2b = genA2B(real B) (identity mappings, target 0).
    """
    terms = {}
    for name in ("disGA", "disLA", "disGB", "disLB"):
        tag = name[3:]
        terms[f"g_adv_{tag}"] = g_adversarial(fake_dis[name][0], gan_type)
        terms[f"g_cam_adv_{tag}"] = g_adversarial(fake_dis[name][1], gan_type)
    terms["g_cycle_A"] = l1(cycle_a, real_a)
    terms["g_cycle_B"] = l1(cycle_b, real_b)
    terms["g_identity_A"] = l1(identity_a, real_a)
    terms["g_identity_B"] = l1(identity_b, real_b)
    terms["g_cam_A"] = bce_with_logits(cam_b2a, 1.0) + bce_with_logits(cam_a2a, 0.0)
    terms["g_cam_B"] = bce_with_logits(cam_a2b, 1.0) + bce_with_logits(cam_b2b, 0.0)
    totals = {}
    for d in "AB":
        adv = sum(terms[f"g_{k}_{s}{d}"] for k in ("adv", "cam_adv") for s in "GL")
        totals[f"g_loss_{d}"] = (
            adv_weight * adv
            + cycle_weight * terms[f"g_cycle_{d}"]
            + identity_weight * terms[f"g_identity_{d}"]
            + cam_weight * terms[f"g_cam_{d}"]
        )
    terms.update(totals)
    return totals["g_loss_A"] + totals["g_loss_B"], terms


def nice_discriminator_loss(real: Mapping, fake: Mapping, *, adv_weight: float, gan_type: str = "lsgan"):
    """NICE-GAN's discriminator total. real/fake map ``disA``/``disB`` to (out_local, out_global, cam_logit, ...)
    (a ``NiceDiscOutput`` or a tuple in its order): disA on real A and on B->A, disB on real B and on A->B.

    Returns (total, per-term metrics).
    """
    terms = {}
    for d in "AB":
        name = f"dis{d}"
        terms[f"d_adv_L{d}"] = d_adversarial(real[name][0], fake[name][0], gan_type)
        terms[f"d_adv_G{d}"] = d_adversarial(real[name][1], fake[name][1], gan_type)
        terms[f"d_cam_{d}"] = d_adversarial(real[name][2], fake[name][2], gan_type)
        # Summed in the official order (global, CAM, local), for float-identical totals.
        terms[f"d_loss_{d}"] = adv_weight * (terms[f"d_adv_G{d}"] + terms[f"d_cam_{d}"] + terms[f"d_adv_L{d}"])
    return terms["d_loss_A"] + terms["d_loss_B"], terms


def nice_generator_loss(
    fake_dis: Mapping,
    *,
    real_a,
    real_b,
    cycle_a,
    cycle_b,
    recon_a,
    recon_b,
    adv_weight: float,
    cycle_weight: float,
    recon_weight: float,
    gan_type: str = "lsgan",
):
    """NICE-GAN's generator total for both directions.

    fake_dis: ``disA`` on B->A and ``disB`` on A->B, each (out_local, out_global, cam_logit, ...).
    cycle_a = A->B->A, recon_a = gen2A(code of real A) (likewise for B); both are compared with the real images.
    """
    terms = {}
    for d, real, cycle, recon in (("A", real_a, cycle_a, recon_a), ("B", real_b, cycle_b, recon_b)):
        out = fake_dis[f"dis{d}"]
        terms[f"g_adv_L{d}"] = g_adversarial(out[0], gan_type)
        terms[f"g_adv_G{d}"] = g_adversarial(out[1], gan_type)
        terms[f"g_cam_adv_{d}"] = g_adversarial(out[2], gan_type)
        terms[f"g_cycle_{d}"] = l1(cycle, real)
        terms[f"g_recon_{d}"] = l1(recon, real)
        adv = terms[f"g_adv_G{d}"] + terms[f"g_cam_adv_{d}"] + terms[f"g_adv_L{d}"]
        terms[f"g_loss_{d}"] = (
            adv_weight * adv + cycle_weight * terms[f"g_cycle_{d}"] + recon_weight * terms[f"g_recon_{d}"]
        )
    return terms["g_loss_A"] + terms["g_loss_B"], terms
