"""Baselines (DIP, classical methods, GAN inversion and DGP ablations) and the PGD attack, on tiny inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dgp.attacks import pgd_linf
from dgp.baselines import BaselineResult
from dgp.baselines.classical import BicubicUpsampling, NonLocalMeans, ObservationBaseline, OpenCVInpainting
from dgp.baselines.dip import DeepImagePrior, DIPConfig, SkipNet
from dgp.baselines.inversion import (GANInversion, ablation, all_blocks, latent_only, mse_only, no_search,
                                     random_generator_prior)
from dgp.classifier import Classifier, ClassifierConfig
from dgp.degradations import Downsample, GaussianNoise, Grayscale, Identity, Mask, center_hole
from dgp.metrics import psnr
from dgp.schedule import Schedule, Stage, get_preset

TINY_DIP = DIPConfig(iterations=30, input_channels=8, down_channels=(8, 8), up_channels=(8, 8),
                     skip_channels=(2, 2), reg_noise_std=0.0, ema=0.0)


def smooth_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth random colour image ``(1, 3, size, size)`` in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def tiny_schedule(n_candidates: int = 4) -> Schedule:
    """Two one-step stages, progressive, feature + MSE distance."""
    return Schedule("tiny", (Stage(1, 1e-4, 1e-2, ft_num=1, w_mse=1.0), Stage(1, 1e-4, 1e-2, ft_num=2, w_D=1.0)),
                    n_candidates=n_candidates)


# ------------------------------------------------------------------------------------------------ DIP


def test_dip_reduces_its_loss_and_returns_an_image() -> None:
    x = smooth_image(16)
    result = DeepImagePrior(16, TINY_DIP)(x, Identity())
    assert isinstance(result, BaselineResult)
    assert result.image.shape == (1, 3, 16, 16)
    assert result.image.min() >= -1 and result.image.max() <= 1
    assert len(result.history) == TINY_DIP.iterations
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first


def test_dip_fits_through_the_degradation_and_is_repeatable() -> None:
    x = smooth_image(16)
    op = Downsample(2)
    obs = op.observe(x)
    config = dataclasses.replace(TINY_DIP, iterations=5, reg_noise_std=0.05, ema=0.9)
    a = DeepImagePrior(16, config)(obs, op, generator=torch.Generator().manual_seed(3))
    b = DeepImagePrior(16, config)(obs, op, generator=torch.Generator().manual_seed(3))
    assert a.image.shape == (1, 3, 16, 16) and a.target.shape == (1, 3, 16, 16)
    assert torch.equal(a.image, b.image)


def test_dip_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="observation is"):
        DeepImagePrior(16, TINY_DIP)(torch.zeros(1, 3, 8, 8), Identity())
    with pytest.raises(ValueError, match="divisible"):
        DeepImagePrior(12, DIPConfig(down_channels=(4, 4, 4), up_channels=(4, 4, 4), skip_channels=(1, 1, 1)))
    with pytest.raises(ValueError, match="same length"):
        DIPConfig(down_channels=(4, 4), up_channels=(4,), skip_channels=(1, 1))
    with pytest.raises(ValueError, match="ema"):
        DIPConfig(ema=1.0)
    with pytest.raises(ValueError, match="divisible"):
        SkipNet(TINY_DIP)(torch.zeros(1, 8, 10, 10))


# ------------------------------------------------------------------------------------------ classical


def test_classical_methods_return_full_size_images() -> None:
    x = smooth_image()
    op = Downsample(4)
    obs = op.observe(x)
    out = BicubicUpsampling(32)(obs, op)
    assert out.image.shape == (1, 3, 32, 32) and out.target.shape == (1, 3, 32, 32)
    assert float(psnr(out.image, x)) > 25
    lifted = ObservationBaseline(32)(obs, op)
    assert torch.allclose(lifted.image, op.lift(obs, (32, 32)))
    gray = Grayscale()
    assert torch.equal(ObservationBaseline(32)(gray(x), gray).image, gray(x))


def test_classical_methods_refuse_other_degradations() -> None:
    x = smooth_image()
    assert not BicubicUpsampling(32).supports(Grayscale())
    assert not OpenCVInpainting(32).supports(Downsample(2))
    assert not NonLocalMeans(32).supports(Mask(center_hole(32, 32)))
    with pytest.raises(ValueError, match="does not handle"):
        BicubicUpsampling(32)(x, Identity())
    with pytest.raises(ValueError, match="telea"):
        OpenCVInpainting(32, method="fast")


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_inpainting_fills_the_hole(method: str) -> None:
    pytest.importorskip("cv2")
    x = smooth_image()
    op = Mask(center_hole(32, 32), name="hole")
    obs = op(x)
    out = OpenCVInpainting(32, method)(obs, op).image
    hole = op.hole_mask((32, 32))
    keep = 1 - hole
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out * keep, obs * keep, atol=1.5 / 127.5)  # known pixels kept (up to 8-bit rounding)
    assert float(psnr(out, x, mask=hole)) > float(psnr(obs, x, mask=hole)) + 5  # the hole is filled sensibly


def test_non_local_means_reduces_noise() -> None:
    pytest.importorskip("cv2")
    x = smooth_image()
    op = GaussianNoise(0.1)
    obs = op.observe(x, torch.Generator().manual_seed(0))
    out = NonLocalMeans(32)(obs, op).image
    assert out.shape == (1, 3, 32, 32)
    assert float(psnr(out, x)) > float(psnr(obs, x)) + 2


# ------------------------------------------------------------------------------- GAN baselines, ablations


def test_schedule_transforms() -> None:
    base = get_preset("sr")
    frozen = latent_only(base)
    assert all(s.lr_G == 0 and s.ft_num == 0 for s in frozen.stages) and not frozen.update_embed
    mse = mse_only(get_preset("colorization"))
    assert all(s.w_D == 0 and s.w_mse > 0 for s in mse.stages)
    assert all(s.ft_num is None for s in all_blocks(base).stages)
    assert no_search(base).n_candidates == 0
    assert [s.iterations for s in frozen.stages] == [s.iterations for s in base.stages]


def test_gan_inversion_keeps_the_generator(tiny_prior) -> None:
    x = tiny_prior.G(torch.randn(1, tiny_prior.G.dim_z), tiny_prior.G.shared(torch.tensor([1]))).detach()
    before = {k: v.clone() for k, v in tiny_prior.G.state_dict().items()}
    result = GANInversion(tiny_prior, tiny_schedule())(x, Identity(), class_id=1)
    assert result.image.shape == (1, 3, 32, 32)
    for k, v in result.generator_state.items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in tiny_prior.G.parameters())  # the prior itself is untouched


def test_ablations_and_random_generator_run(tiny_prior) -> None:
    x = smooth_image()
    for name in ("dgp-mse-only", "dgp-all-blocks", "dgp-no-search"):
        result = ablation(name, tiny_prior, tiny_schedule(2))(Grayscale()(x), Grayscale(), class_id=0)
        assert result.image.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation("dgp-nothing", tiny_prior, tiny_schedule())
    random_a = random_generator_prior(tiny_prior, seed=1)
    random_b = random_generator_prior(tiny_prior, seed=1)
    assert random_a.D is tiny_prior.D
    wa, wb, w0 = (p.G.linear.weight for p in (random_a, random_b, tiny_prior))
    assert torch.equal(wa, wb) and not torch.equal(wa, w0)


# ---------------------------------------------------------------------------------------------- attack


def test_pgd_increases_the_loss_within_eps() -> None:
    model = Classifier(ClassifierConfig(n_classes=3, widths=(4, 8, 8)), generator=torch.Generator().manual_seed(0))
    model.eval()
    images = torch.cat([smooth_image(seed=s) for s in range(4)])
    with torch.no_grad():
        labels = model(images).argmax(1)
        clean_loss = F.cross_entropy(model(images), labels)
    eps = 8 / 255
    adv = pgd_linf(model, images, labels, eps=eps, steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adv_loss = F.cross_entropy(model(adv), labels)
    assert adv_loss > clean_loss
    assert float((adv - images).abs().max()) <= 2 * eps + 1e-6
    assert adv.min() >= -1 and adv.max() <= 1
    again = pgd_linf(model, images, labels, eps=eps, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
    with pytest.raises(ValueError, match="labels"):
        pgd_linf(model, images, labels[:2])
