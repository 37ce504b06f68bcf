"""Demonstration of the building blocks on real data: a 2D WGAN-GP DCGAN and a VAE trained on
axial slices of real T1 head MRs, writing sample grids (PNG). ``medgan slices-demo`` runs it.

Slices: each volume is reoriented to RAS, scaled by its 0.5/99.5 percentiles to [-1, 1], and its
axial slices from the central 60 % that hold at least 15 % non-background voxels are resized to
``size`` x ``size`` (MONAI ``Resize``, area interpolation).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize

from medgan.data.intensity import fit_scaling
from medgan.data.transforms import to_canonical
from medgan.io import read_volume
from medgan.losses import AdversarialLoss
from medgan.networks import VAE, DCGANDiscriminator, DCGANGenerator, vae_loss
from medgan.training import GANStep

logger = logging.getLogger(__name__)
T1_VOLUMES = ["head/mr/mni2009-t1-template.nii.gz", "head/mr/seg3d-t1.nii.gz", "head/mr/stroke-t1.nii.gz",
              "head/mr/adi-t1-memprage.nii.gz"]


def axial_slices(paths: list[Path], size: int = 64) -> torch.Tensor:
    """``(N, 1, size, size)`` axial slices in [-1, 1] from the given volumes."""
    resize = Resize((size, size), mode="area")
    out = []
    for p in paths:
        vol = read_volume(p)
        s = fit_scaling(vol.array, "percentile")
        can = s.forward(to_canonical(vol, vol.spacing_mm)[0].as_tensor())  # (D, H, W) RAS at native spacing
        n = can.shape[2]
        for k in range(int(0.2 * n), int(0.8 * n)):
            sl = can[:, :, k]
            if (sl > -0.9).float().mean() < 0.15:
                continue
            out.append(resize(sl[None].float()).clamp(-1, 1))
    if not out:
        raise ValueError("no usable slices in the given volumes")
    return torch.stack(out)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """A PNG grid of ``(N, 1, H, W)`` images in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images[: nrow * nrow, 0].float().cpu().numpy()
    rows = int(np.ceil(len(imgs) / nrow))
    h, w = imgs.shape[1:]
    grid = np.full((rows * h, nrow * w), -1.0)
    for i, im in enumerate(imgs):
        r, c = divmod(i, nrow)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im.T[::-1]  # rows = anterior up
    plt.imsave(path, grid, cmap="gray", vmin=-1, vmax=1)
    return path


#: truncation thresholds of the sampling figure (None: untruncated)
TRUNCATIONS: tuple[float | None, ...] = (0.0, 0.5, 1.0, 2.0, None)


@torch.no_grad()
def gan_sampling_figures(g: torch.nn.Module, latent_dim: int, out: Path, seed: int = 0, n: int = 8) -> dict[str, float]:
    """Sampling controls of a trained GAN generator ``g: z (N, latent_dim) -> (N, 1, H, W)``:
    ``wgan_gp_truncation.png`` (one row per threshold of :data:`TRUNCATIONS`, the same ``n``
    seeds' noise in each: BigGAN's truncation trick) and ``wgan_gp_interpolation.png`` (a linear
    then a spherical walk between two seeded latents). Returns the diversity per threshold: the
    mean absolute difference between the row's images ([-1, 1] units)."""
    from medgan.sampling import latent_noise, lerp, slerp

    rows, diversity = [], {}
    for t in TRUNCATIONS:
        x = g(latent_noise((n, latent_dim), seed=seed + 1, truncation=t))
        rows.append(x)
        diversity["none" if t is None else str(t)] = float(torch.cdist(x.flatten(1), x.flatten(1), p=1).sum()
                                                           / (n * (n - 1) * x[0].numel()))
    save_grid(torch.cat(rows), out / "wgan_gp_truncation.png", nrow=n)
    z0, z1 = latent_noise((1, latent_dim), seed=seed + 2), latent_noise((1, latent_dim), seed=seed + 3)
    ts = np.linspace(0.0, 1.0, n)
    walk = [g(lerp(z0, z1, float(t))) for t in ts] + [g(slerp(z0, z1, float(t))) for t in ts]
    save_grid(torch.cat(walk), out / "wgan_gp_interpolation.png", nrow=n)
    return diversity


def run_slices_demo(data_dir: str | Path, output_dir: str | Path, gan_iters: int = 1500, vae_iters: int = 1500,
                    size: int = 64, seed: int = 0) -> dict:
    """Train both models and write ``real.png``, ``wgan_gp_samples.png``, the GAN's truncation
    and interpolation figures (:func:`gan_sampling_figures`), ``vae_samples.png``,
    ``vae_reconstructions.png`` and ``summary.json`` (losses and timings) to ``output_dir``."""
    torch.manual_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(data_dir) / v for v in T1_VOLUMES if (Path(data_dir) / v).is_file()]
    data = axial_slices(paths, size)
    logger.info("%d axial slices from %d volumes", len(data), len(paths))
    save_grid(data[torch.randperm(len(data))[:64]], out / "real.png")
    summary: dict = {"slices": len(data), "volumes": [str(p) for p in paths]}

    def batch(n: int = 32) -> torch.Tensor:
        return data[torch.randint(len(data), (n,))]

    # WGAN-GP (Gulrajani et al. 2017): n_critic 5, lambda 10, Adam 1e-4 betas (0, 0.9); layer-norm critic
    n_up = int(np.log2(size // 4))
    g = DCGANGenerator(2, latent_dim=64, channels=[128, 64, 32, 16, 16][:n_up], base=4)
    d = DCGANDiscriminator(2, channels=[16, 32, 64, 128, 128][:n_up], norm="layer")
    step = GANStep(g, d, torch.optim.Adam(g.parameters(), 1e-4, betas=(0.0, 0.9)),
                   torch.optim.Adam(d.parameters(), 1e-4, betas=(0.0, 0.9)), AdversarialLoss("wgan"),
                   n_critic=5, penalty="gp", penalty_weight=10.0)
    t0 = time.perf_counter()
    for it in range(1, gan_iters + 1):
        logs = step([batch() for _ in range(5)], lambda: torch.randn(32, 64))
        if it % 100 == 0:
            logger.info("wgan-gp %d %s", it, logs)
    summary["wgan_gp"] = {"iters": gan_iters, "seconds": time.perf_counter() - t0, "last": logs}
    g.eval()
    with torch.no_grad():
        save_grid(g(torch.randn(64, 64)), out / "wgan_gp_samples.png")
        summary["wgan_gp_truncation"] = gan_sampling_figures(g, 64, out, seed)

    vae = VAE(2, 1, (size, size), latent_dim=32, channels=[32, 64, 128, 256][: max(2, n_up)])
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    t0 = time.perf_counter()
    for it in range(1, vae_iters + 1):
        x = batch()
        losses = vae_loss(vae(x), x, beta=1.0, sigma=0.1)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        if it % 100 == 0:
            logger.info("vae %d recon %.1f kl %.1f", it, losses["recon"].item(), losses["kl"].item())
    summary["vae"] = {"iters": vae_iters, "seconds": time.perf_counter() - t0,
                      "last": {k: float(v) for k, v in losses.items()}}
    vae.eval()
    x = batch(32)
    with torch.no_grad():
        save_grid(vae.sample(64), out / "vae_samples.png")
        save_grid(torch.stack([x, vae(x).recon], 1).flatten(0, 1), out / "vae_reconstructions.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
