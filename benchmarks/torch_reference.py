"""The official PyTorch training steps (znxlwm/UGATIT-pytorch, alpc91/NICE-GAN-pytorch), built from a user's
checkout, for timing and for training the official networks on our data.

None of the official code lives in this repository: ``networks.py`` (``ResnetGenerator``, ``Discriminator`` and,
for U-GAT-IT, ``RhoClipper``) is imported at run time from the directory the user names. The steps are written
here following the official loops:

- U-GAT-IT (``UGATIT.train``): D update (fakes *not* detached, so the D loss backpropagates into both generators,
  as the official code does), G update, rho clip.
- NICE-GAN (``NICE.train``): D update on the codes of both real batches with the translations detached, then G
  update from the codes computed again; only the generators are in the G optimiser (the encoders, inside the
  discriminators, learn from the D loss alone); no rho clip.

Both use ``torch.optim.Adam(lr, betas=(0.5, 0.999), weight_decay)`` and run on the CPU or a CUDA device
(``device``; there ``torch.backends.cudnn.benchmark`` is on, as a user timing it would set), in float32 or under
``torch.autocast(dtype=torch.bfloat16)`` (``autocast``): the same networks, losses and order of calls either way,
only the precision of autocast's operations differs. torch is optional and imported lazily.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import os
import pathlib
import subprocess
import sys
import tempfile
import types

from ugatit_jax.errors import UsageError


def import_torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("--torch-reference needs PyTorch: pip install 'ugatit-jax[torch]'") from e
    return torch


# Each family's official repository and the names its networks.py must define.
OFFICIAL = {
    "ugatit": ("znxlwm/UGATIT-pytorch", ("ResnetGenerator", "Discriminator", "RhoClipper")),
    "nice": ("alpc91/NICE-GAN-pytorch", ("ResnetGenerator", "Discriminator")),
}


def locate_networks(path: str | os.PathLike, model: str = "ugatit", option: str = "--torch-reference") -> pathlib.Path:
    """``networks.py`` of a checkout, or extracted from a bare git directory (``git show HEAD:networks.py``)."""
    root = pathlib.Path(path).expanduser()
    if root.is_file() and root.name == "networks.py":
        return root
    if (root / "networks.py").is_file():
        return root / "networks.py"
    if (root / "HEAD").is_file() and (root / "objects").is_dir():  # bare repository
        out = pathlib.Path(tempfile.mkdtemp(prefix="ugatit_official_")) / "networks.py"
        try:
            text = subprocess.run(
                ["git", "--git-dir", str(root), "show", "HEAD:networks.py"], check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise UsageError(f"{option} {root}: cannot read networks.py from the git directory ({e})") from e
        out.write_text(text)
        return out
    raise UsageError(f"{option} {root}: no networks.py there (expected a checkout of {OFFICIAL[model][0]})")


@functools.cache
def import_official(
    path: str | os.PathLike, model: str = "ugatit", option: str = "--torch-reference"
) -> types.ModuleType:
    """Import the official ``networks.py`` of ``model``'s family by path under a private module name; once per
    process (``throughput.py`` checks the checkout before compiling, then builds the step from the same module, and
    a bare git directory would otherwise be extracted into a new temporary folder each time)."""
    import_torch()
    repository, names = OFFICIAL[model]
    file = locate_networks(path, model, option)
    spec = importlib.util.spec_from_file_location(f"{model}_official_networks", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in names:
        if not hasattr(module, name):
            raise UsageError(f"{file}: no {name}; is this the networks.py of {repository}?")
    if model == "nice" and hasattr(module, "RhoClipper"):
        raise UsageError(
            f"{file}: this is U-GAT-IT's networks.py (it has RhoClipper); --config.model=nice needs {repository}"
        )
    return module


def check_detach(model: str, detach: bool) -> None:
    """``--torch-detach`` is a U-GAT-IT variant: the official NICE-GAN step already detaches its translations."""
    if detach and model == "nice":
        raise UsageError("--torch-detach: the official NICE-GAN step already detaches its translations")


def official_step(networks: types.ModuleType, config, **kwargs) -> OfficialStep | OfficialNiceStep:
    """The official step of ``config.model``'s family."""
    return (OfficialNiceStep if config.model == "nice" else OfficialStep)(networks, config, **kwargs)


class _Official:
    """What both official steps share: torch threads and device, the seed, Adam, batches, autocast."""

    def __init__(
        self,
        config,
        *,
        threads: int | None = None,
        device: str = "cpu",
        autocast: str | None = None,
        cudnn_benchmark: bool = True,
    ):
        torch = self.torch = import_torch()
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--torch-device {device}: this PyTorch ({torch.__version__}) sees no CUDA device")
            torch.backends.cudnn.benchmark = cudnn_benchmark  # autotuned cuDNN algorithms, as a GPU user runs it
        if autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast={autocast!r}: only bfloat16 (float16 would need a GradScaler)")
        self.autocast_dtype = torch.bfloat16 if autocast else None
        torch.manual_seed(config.seed)
        self.c = config
        self.mse, self.l1 = torch.nn.MSELoss(), torch.nn.L1Loss()

    def _generator_pair(self, networks):
        """Two official ``ResnetGenerator``s at the config's sizes (the same signature in both releases)."""
        c = self.c
        return tuple(
            networks.ResnetGenerator(3, 3, ngf=c.ch, n_blocks=c.n_res, img_size=c.img_size, light=c.light)
            for _ in range(2)
        )

    def _networks(self, *nets):
        """Move to the device in train mode, before the optimisers are built: their state lives beside them."""
        for net in nets:
            net.to(self.device)
            net.train()

    def _adam(self, *nets):
        c = self.c
        params = itertools.chain(*(net.parameters() for net in nets))
        return self.torch.optim.Adam(
            params, lr=c.lr, betas=(c.adam_b1, c.adam_b2), eps=c.adam_eps, weight_decay=c.weight_decay
        )

    def random_batch(self, seed: int):
        """Two [-1, 1] NCHW batches, drawn on the CPU (the same numbers on every device), placed on ``device``."""
        g = self.torch.Generator().manual_seed(seed)
        shape = (self.c.batch_size, 3, self.c.img_size, self.c.img_size)
        return tuple((self.torch.rand(shape, generator=g) * 2 - 1).to(self.device) for _ in range(2))

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _autocast(self):
        """Forward passes and losses under autocast (backward outside it, as PyTorch recommends); a no-op context
        in float32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _d_adv(self, real, fake):
        torch = self.torch
        return self.mse(real, torch.ones_like(real)) + self.mse(fake, torch.zeros_like(fake))

    def _g_adv(self, fake):
        return self.mse(fake, self.torch.ones_like(fake))


class OfficialStep(_Official):
    """The six official U-GAT-IT networks, their two Adam optimisers and one training step, at our config's sizes."""

    def __init__(self, networks: types.ModuleType, config, *, detach: bool = False, **kwargs):
        super().__init__(config, **kwargs)
        c = config
        self.genA2B, self.genB2A = self._generator_pair(networks)
        self.disGA = networks.Discriminator(3, ndf=c.ch, n_layers=c.disc_global_layers)
        self.disGB = networks.Discriminator(3, ndf=c.ch, n_layers=c.disc_global_layers)
        self.disLA = networks.Discriminator(3, ndf=c.ch, n_layers=c.disc_local_layers)
        self.disLB = networks.Discriminator(3, ndf=c.ch, n_layers=c.disc_local_layers)
        self._networks(self.genA2B, self.genB2A, self.disGA, self.disGB, self.disLA, self.disLB)
        self.G_optim = self._adam(self.genA2B, self.genB2A)
        self.D_optim = self._adam(self.disGA, self.disGB, self.disLA, self.disLB)
        self.rho_clipper = networks.RhoClipper(0, 1)
        self.bce = self.torch.nn.BCEWithLogitsLoss()
        self.detach = detach  # not official: skips the D loss's wasted backward pass through the generators

    def _d_loss(self, dis_x, real_x, fake_x):
        """The official d_loss_X: X's global and local discriminators, each on real X (-> 1), then on the
        translations into X (-> 0), outputs and CAM logits."""
        total = 0.0
        for dis in dis_x:
            real_out, real_cam, _ = dis(real_x)
            fake_out, fake_cam, _ = dis(fake_x)
            total = total + self._d_adv(real_out, fake_out) + self._d_adv(real_cam, fake_cam)
        return self.c.adv_weight * total

    def _g_loss(self, real_x, fake_x, fake_x_cam, fake_y, to_x, dis_x):
        """The official g_loss_X, from the translations already made: ``fake_x`` (into X) judged by X's
        discriminators, the cycle ``to_x(fake_y)`` and the identity ``to_x(real_x)``, and the CAM term."""
        c, ones, zeros = self.c, self.torch.ones_like, self.torch.zeros_like
        cycle_x, _, _ = to_x(fake_y)
        identity_x, identity_cam, _ = to_x(real_x)
        adv = sum(self._g_adv(t) for dis in dis_x for t in dis(fake_x)[:2])
        cam = self.bce(fake_x_cam, ones(fake_x_cam)) + self.bce(identity_cam, zeros(identity_cam))
        return (
            c.adv_weight * adv
            + c.cycle_weight * self.l1(cycle_x, real_x)
            + c.identity_weight * self.l1(identity_x, real_x)
            + c.cam_weight * cam
        )

    def __call__(self, real_A, real_B) -> tuple[float, float]:
        """One step of the official loop; returns (D loss, G loss). Every network runs as often as there, and each
        discriminator sees its inputs in the official order (its power iteration advances once per call)."""
        dis_A, dis_B = (self.disGA, self.disLA), (self.disGB, self.disLB)
        real_A, real_B = real_A.to(self.device), real_B.to(self.device)  # no copy when already there
        # Update D.
        self.D_optim.zero_grad()
        with self._autocast():
            fake_A2B, _, _ = self.genA2B(real_A)
            fake_B2A, _, _ = self.genB2A(real_B)
            if self.detach:
                fake_A2B, fake_B2A = fake_A2B.detach(), fake_B2A.detach()
            d_loss = self._d_loss(dis_A, real_A, fake_B2A) + self._d_loss(dis_B, real_B, fake_A2B)
        d_loss.backward()
        self.D_optim.step()

        # Update G.
        self.G_optim.zero_grad()
        with self._autocast():
            fake_A2B, fake_A2B_cam, _ = self.genA2B(real_A)
            fake_B2A, fake_B2A_cam, _ = self.genB2A(real_B)
            g_loss = self._g_loss(real_A, fake_B2A, fake_B2A_cam, fake_A2B, self.genB2A, dis_A) + self._g_loss(
                real_B, fake_A2B, fake_A2B_cam, fake_B2A, self.genA2B, dis_B
            )
        g_loss.backward()
        self.G_optim.step()

        # Clip rho of every AdaILN / ILN after the optimiser step.
        self.genA2B.apply(self.rho_clipper)
        self.genB2A.apply(self.rho_clipper)
        return d_loss.item(), g_loss.item()


class OfficialNiceStep(_Official):
    """The four official NICE-GAN networks (two generators, two discriminators that are also the encoders), their
    two Adam optimisers and one training step, at our config's sizes. The official D update already detaches the
    translations, so there is no ``detach`` variant."""

    def __init__(self, networks: types.ModuleType, config, *, detach: bool = False, **kwargs):
        check_detach(config.model, detach)
        super().__init__(config, **kwargs)
        c = config
        self.gen2B, self.gen2A = self._generator_pair(networks)
        self.disA = networks.Discriminator(3, ndf=c.ch, n_layers=c.n_dis)
        self.disB = networks.Discriminator(3, ndf=c.ch, n_layers=c.n_dis)
        self._networks(self.gen2B, self.gen2A, self.disA, self.disB)
        self.G_optim = self._adam(self.gen2B, self.gen2A)  # the encoders are not in it
        self.D_optim = self._adam(self.disA, self.disB)

    def _heads_d(self, real, fake):
        """LSGAN on the local, global and CAM outputs: real -> 1, fake -> 0 (official D_loss_X)."""
        return sum(self._d_adv(r, f) for r, f in zip(real[:3], fake[:3]))

    def __call__(self, real_A, real_B) -> tuple[float, float]:
        """One step of the official loop; returns (D loss, G loss). Each discriminator runs four times, in the
        official order (its power iteration advances once per call)."""
        c = self.c
        real_A, real_B = real_A.to(self.device), real_B.to(self.device)
        # Update D.
        self.D_optim.zero_grad()
        with self._autocast():
            real_A_out, real_B_out = self.disA(real_A), self.disB(real_B)  # (local, global, cam, heatmap, z)
            fake_A2B = self.gen2B(real_A_out[4]).detach()
            fake_B2A = self.gen2A(real_B_out[4]).detach()
            fake_A_out, fake_B_out = self.disA(fake_B2A), self.disB(fake_A2B)
            d_loss = c.adv_weight * (self._heads_d(real_A_out, fake_A_out) + self._heads_d(real_B_out, fake_B_out))
        d_loss.backward()
        self.D_optim.step()

        # Update G.
        self.G_optim.zero_grad()
        with self._autocast():
            real_A_z, real_B_z = self.disA(real_A)[4], self.disB(real_B)[4]
            fake_A2B, fake_B2A = self.gen2B(real_A_z), self.gen2A(real_B_z)
            fake_A_out, fake_B_out = self.disA(fake_B2A), self.disB(fake_A2B)
            fake_B2A2B, fake_A2B2A = self.gen2B(fake_A_out[4]), self.gen2A(fake_B_out[4])
            fake_A2A, fake_B2B = self.gen2A(real_A_z), self.gen2B(real_B_z)
            g_loss = (
                c.adv_weight * sum(self._g_adv(t) for t in (*fake_A_out[:3], *fake_B_out[:3]))
                + c.cycle_weight * (self.l1(fake_A2B2A, real_A) + self.l1(fake_B2A2B, real_B))
                + c.recon_weight * (self.l1(fake_A2A, real_A) + self.l1(fake_B2B, real_B))
            )
        g_loss.backward()
        self.G_optim.step()
        return d_loss.item(), g_loss.item()
