"""GAN and autoencoder networks in 1D/2D/3D, spectral norm, straight-through VQ, training steps."""

import pytest
import torch

from medgan.losses import AdversarialLoss
from medgan.networks import (
    CVAE, VAE, VQVAE, AdversarialAutoencoder, ConditionalDCGANGenerator, ConditionalPatchDiscriminator,
    DCGANDiscriminator, DCGANGenerator, LabelMapGenerator, SelfAttention, UNetGenerator, apply_spectral_norm,
    pix2pix_generator_loss, vae_loss,
)
from medgan.training import GANStep, aae_step


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_dcgan_any_dims(dims):
    g = DCGANGenerator(dims, latent_dim=8, channels=(16, 8), base=4)
    d = DCGANDiscriminator(dims, channels=(8, 16), norm="layer", spectral_norm=True)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, 1, *[16] * dims) and (x[0] - x[1]).abs().max() > 1e-4  # each z its own sample
    assert d(x).shape == (3, 1)


def test_spectral_norm_largest_singular_value_is_one():
    torch.manual_seed(0)
    net = apply_spectral_norm(torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Conv2d(3, 8, 3)))
    lin, conv = net[0], net[2]
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(7.0)  # far from 1 before normalisation
    net.train()
    for _ in range(30):  # power iterations run at each training forward
        lin(torch.randn(4, 20))
        conv(torch.randn(1, 3, 8, 8))
    assert torch.linalg.matrix_norm(lin.weight, ord=2).item() == pytest.approx(1.0, abs=0.02)
    assert torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2).item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_self_attention_shape_and_identity_at_init(dims):
    att = SelfAttention(dims, 16)
    x = torch.randn(2, 16, *[6] * dims)
    torch.testing.assert_close(att(x), x)  # gamma starts at 0
    att.gamma.data.fill_(1.0)
    assert att(x).shape == x.shape and not torch.allclose(att(x), x)


def test_class_conditional_gan():
    g = ConditionalDCGANGenerator(num_classes=3, spatial_dims=2, latent_dim=8, channels=(16, 8))
    d = DCGANDiscriminator(2, channels=(8, 16), num_classes=3)
    y = torch.tensor([0, 2])
    x = g(torch.randn(2, 8), y)
    assert x.shape == (2, 1, 16, 16) and d(x, y).shape == (2, 1)
    with pytest.raises(ValueError, match="pass labels"):
        d(x)


@pytest.mark.parametrize("dims", [2, 3])
def test_label_map_gan_and_pix2pix(dims):
    lab = torch.randint(0, 4, (2, 1, *[32] * dims))  # the U-Net halves 4 times
    g = LabelMapGenerator(dims, num_classes=4, features=(4, 4, 8, 8, 8, 4))
    d = ConditionalPatchDiscriminator(dims, 1, 4, ndf=4, n_layers=2)
    fake = g(lab)
    onehot = torch.nn.functional.one_hot(lab[:, 0], 4).movedim(-1, 1)
    assert fake.shape == (2, 1, *[32] * dims) and d(fake, onehot).ndim == dims + 2
    losses = pix2pix_generator_loss(AdversarialLoss("lsgan"), d(fake, onehot), fake, torch.zeros_like(fake))
    assert losses["total"].item() == pytest.approx(losses["adv"].item() + 100 * losses["l1"].item(), rel=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_vae_family_shapes(dims):
    size = (16,) * dims
    x = torch.rand(2, 1, *size) * 2 - 1
    out = VAE(dims, 1, size, latent_dim=4, channels=(4, 8))(x)
    assert out.recon.shape == x.shape and out.mu.shape == (2, 4) and out.prior_mu is None
    cv = CVAE(dims, num_classes=3, condition="labelmap", input_size=size, latent_dim=4, channels=(4, 8), prior="learned")
    lab = torch.randint(0, 3, (2, 1, *size))
    o = cv(x, lab)
    assert o.prior_mu.shape == (2, 4) and vae_loss(o, x, beta=4.0)["total"].isfinite()
    assert cv.sample(c=lab).shape == x.shape
    cc = CVAE(dims, num_classes=5, condition="class", input_size=size, latent_dim=4, channels=(4, 8))
    assert cc(x, torch.tensor([1, 4])).recon.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        VAE(dims, 1, (15,) * dims, channels=(4, 8))


def test_beta_weights_the_kl():
    torch.manual_seed(0)
    vae = VAE(2, 1, (16, 16), latent_dim=4, channels=(4, 8))
    x = torch.rand(2, 1, 16, 16)
    out = vae(x)
    l1, l4 = vae_loss(out, x, beta=1.0), vae_loss(out, x, beta=4.0)
    assert (l4["total"] - l1["total"]).item() == pytest.approx(3 * l1["kl"].item(), rel=1e-2)


def test_sampling_with_a_seed_is_reproducible():
    vae = CVAE(2, num_classes=3, condition="class", input_size=(16, 16), latent_dim=4, channels=(4, 8), prior="learned")
    c = torch.tensor([0, 1, 2])
    a = vae.sample(c=c, generator=torch.Generator().manual_seed(1))
    b = vae.sample(c=c, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dims", [2, 3])
def test_vq_straight_through_reaches_the_encoder(dims):
    vq = VQVAE(dims, 1, channels=(4, 8), num_embeddings=8, embedding_dim=4)
    x = torch.rand(2, 1, *[8] * dims)
    out = vq(x)
    assert out.recon.shape == x.shape
    torch.nn.functional.mse_loss(out.recon, x).backward()  # reconstruction only: no commitment term
    grads = [p.grad for p in vq.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_aae_step_runs_and_learns():
    torch.manual_seed(0)
    m = AdversarialAutoencoder(2, 1, (16, 16), latent_dim=2, channels=(4, 8))
    opts = [torch.optim.Adam(ps, lr=1e-3) for ps in (list(m.encoder.parameters()) + list(m.decoder.parameters()),
                                                     m.discriminator.parameters(), m.encoder.parameters())]
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    first = aae_step(m, x, *opts)
    for _ in range(30):
        last = aae_step(m, x, *opts)
    assert last["recon"] < first["recon"]


def test_gan_step_wgan_gp_moves_generator_to_data():
    """The generic step with WGAN-GP: a generator x = z + b learns b -> 0 for data N(0, 1)."""
    torch.manual_seed(0)

    class Shift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.tensor([3.0]))

        def forward(self, z):
            return z + self.b

    g = Shift()
    d = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.LeakyReLU(0.2), torch.nn.Linear(32, 1))
    step = GANStep(g, d, torch.optim.Adam(g.parameters(), 1e-2, betas=(0.0, 0.9)), torch.optim.Adam(d.parameters(), 1e-3, betas=(0.0, 0.9)),
                   AdversarialLoss("wgan"), n_critic=5, penalty="gp", penalty_weight=10.0)
    for _ in range(250):  # Adam moves b by about lr per step: 3 -> about 0.5
        logs = step(torch.randn(128, 1), lambda: torch.randn(128, 1))
    assert "gp" in logs and abs(g.b.item()) < 1.0


def test_gan_step_pix2pix_with_condition_and_clipping():
    torch.manual_seed(0)
    g = UNetGenerator(2, 1, 1, features=(4, 4, 8, 8, 8, 4))
    d = ConditionalPatchDiscriminator(2, 1, 1, ndf=4, n_layers=2)
    src, tgt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    adv = AdversarialLoss("wgan")
    step = GANStep(g, d, torch.optim.Adam(g.parameters()), torch.optim.RMSprop(d.parameters(), 5e-5), adv, n_critic=2, clip_value=0.01, amp=True)
    logs = step(tgt, src, cond=src, g_extra=lambda fake: {"l1": 100 * torch.nn.functional.l1_loss(fake.float(), tgt)})
    assert {"d_loss", "g_loss", "l1"} <= set(logs)
    assert max(p.abs().max().item() for p in d.parameters()) <= 0.01 + 1e-8
