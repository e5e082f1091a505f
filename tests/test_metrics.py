"""PSNR / SSIM (masked and unmasked) and the Lab color conversion used for colorization outputs."""

from __future__ import annotations

import math

import pytest
import torch

from dgp.colorspace import lab_to_rgb, merge_luminance, rgb_to_lab
from dgp.metrics import SSIM_K1, SSIM_K2, psnr, ssim


def _image(size=(32, 32), seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g) * 2 - 1


def _noise(like: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(like.shape, generator=g) * std


# -------------------------------------------------------------------------------------------- psnr


def test_psnr_identical_is_inf() -> None:
    x = _image()
    value = psnr(x, x)
    assert value.shape == (2,)
    assert torch.isinf(value).all()


def test_psnr_constant_offset_known_value() -> None:
    x = torch.zeros(3, 3, 16, 16)
    y = x + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, y), torch.full((3,), 20.0))
    torch.testing.assert_close(psnr(x, x + 0.02), torch.full((3,), 40.0))


def test_psnr_per_image() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[1] += 0.2
    value = psnr(x, y)
    assert torch.isinf(value[0]) and value[1].item() == pytest.approx(20.0, rel=1e-5)


def test_psnr_masked_only_looks_inside() -> None:
    x = torch.zeros(1, 3, 16, 16)
    y = x.clone()
    y[..., :8, :] += 0.2  # error in the top half only
    top = torch.zeros(1, 1, 16, 16)
    top[..., :8, :] = 1
    assert psnr(x, y, mask=top).item() == pytest.approx(20.0, rel=1e-5)
    assert torch.isinf(psnr(x, y, mask=1 - top)).all()
    # unmasked: MSE halves -> +3.01 dB
    assert psnr(x, y).item() == pytest.approx(20.0 + 10 * math.log10(2), rel=1e-5)


def test_psnr_batch_mask() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.2
    mask = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(psnr(x, y, mask=mask), torch.full((2,), 20.0))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_validation(metric) -> None:
    x = _image((16, 16))
    with pytest.raises(ValueError, match="same shape"):
        metric(x, x[:, :, :15])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metric(x[0], x[0])
    with pytest.raises(ValueError, match="mask must have shape"):
        metric(x, x, mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        metric(x, x, mask=torch.ones(3, 1, 16, 16))
    with pytest.raises(ValueError, match="no pixels"):
        metric(x, x, mask=torch.zeros(1, 1, 16, 16))


# -------------------------------------------------------------------------------------------- ssim


def test_ssim_identical_is_one() -> None:
    x = _image((37, 29))
    torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)


def test_ssim_decreases_with_noise() -> None:
    x = _image((40, 40), batch=1) * 0.5
    values = [ssim(x, (x + _noise(x, std)).clamp(-1, 1)).item() for std in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert all(a > b for a, b in zip(values, values[1:]))


def test_ssim_constant_images_known_value() -> None:
    # for flat images only the luminance term remains: (2 mx my + C1) / (mx^2 + my^2 + C1)
    mx, my = 0.2, 0.6
    x = torch.full((1, 3, 16, 16), mx * 2 - 1)
    y = torch.full((1, 3, 16, 16), my * 2 - 1)
    c1 = SSIM_K1**2
    expected = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-5)
    assert SSIM_K2 == 0.03


def test_ssim_masked_only_looks_inside() -> None:
    x = _image((48, 48), batch=1) * 0.5
    y = x.clone()
    y[..., :, 30:] += _noise(y[..., :, 30:], 0.3)  # corrupt the right part
    left = torch.zeros(1, 1, 48, 48)
    left[..., :, :20] = 1  # more than 5 pixels away from the corruption
    assert ssim(x, y, mask=left).item() == pytest.approx(1.0, abs=1e-5)
    right = torch.zeros(1, 1, 48, 48)
    right[..., :, 30:] = 1
    assert ssim(x, y, mask=right) < ssim(x, y) < 1


def test_ssim_too_small() -> None:
    x = torch.zeros(1, 3, 10, 32)
    with pytest.raises(ValueError, match="11x11"):
        ssim(x, x)


# -------------------------------------------------------------------------------------- colorspace


def test_lab_round_trip() -> None:
    x = _image((16, 16), batch=3)
    back = lab_to_rgb(rgb_to_lab(x))
    assert (back - x).abs().max() < 1e-4
    x64 = x.double()
    assert (lab_to_rgb(rgb_to_lab(x64)) - x64).abs().max() < 1e-10


def test_lab_known_values() -> None:
    colors = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, -1.0]]).view(3, 3, 1, 1)
    lab = rgb_to_lab(colors)[..., 0, 0]
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)


def test_lab_gradients_finite() -> None:
    x = _image((8, 8), batch=1)
    x[..., :2, :2] = -1.0  # black pixels: the cube-root branch boundary
    x.requires_grad_(True)
    lab_to_rgb(rgb_to_lab(x)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_merge_luminance_keeps_reference_lightness_and_result_colors() -> None:
    g = torch.Generator().manual_seed(0)
    size = (1, 1, 8, 8)
    # moderate lightness and chroma keep every combination inside the sRGB gamut
    lightness = 40 + 20 * torch.rand(size, generator=g)
    chroma = 30 * torch.rand(1, 2, 8, 8, generator=g) - 15
    result_lab = torch.cat([lightness, chroma], dim=1)
    reference_lab = torch.cat([40 + 20 * torch.rand(size, generator=g), torch.zeros(1, 2, 8, 8)], dim=1)
    result, reference = lab_to_rgb(result_lab), lab_to_rgb(reference_lab)
    merged = merge_luminance(result, reference)
    assert merged.shape == result.shape and merged.min() >= -1 and merged.max() <= 1
    merged_lab = rgb_to_lab(merged)
    torch.testing.assert_close(merged_lab[:, :1], reference_lab[:, :1], atol=1e-2, rtol=0)
    torch.testing.assert_close(merged_lab[:, 1:], result_lab[:, 1:], atol=1e-2, rtol=0)
    # a single-channel reference is repeated on three channels
    torch.testing.assert_close(merge_luminance(result, reference[:, :1]), merged)


def test_merge_luminance_validation() -> None:
    x = _image((8, 8))
    with pytest.raises(ValueError, match="reference size"):
        merge_luminance(x, x[..., :4, :4])
    with pytest.raises(ValueError, match="reference must have shape"):
        merge_luminance(x, x[:, :2])
    with pytest.raises(ValueError, match=r"result must have shape"):
        merge_luminance(x[:, :1], x)
