"""Full-reference image metrics: PSNR and SSIM, optionally restricted to a mask.

Conventions (shared by both metrics):

* Inputs are ``(B, C, H, W)`` tensors in [-1, 1] (``C`` is normally 3). They are mapped to [0, 1] and the
  data range is 1. Inputs are not clipped.
* Metrics are computed on RGB directly (no conversion to luma), per channel, and averaged over channels.
* A mask is ``(1, 1, H, W)`` or ``(B, 1, H, W)``; 1 marks pixels that count, 0 pixels that are ignored.
  For inpainting, pass the hole mask to score the filled region only.
* Both return one value per image, a ``(B,)`` tensor (float64 for float64 inputs, float32 otherwise);
  the computation itself runs in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "SSIM_WINDOW", "SSIM_SIGMA", "SSIM_K1", "SSIM_K2"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: Tensor, y: Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def _check_mask(mask: Tensor, x: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    b, _, h, w = x.shape
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, b) or mask.shape[-2:] != (h, w):
        raise ValueError(f"mask must have shape (1, 1, {h}, {w}) or ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")
    return mask.to(dtype=_work_dtype(x), device=x.device).expand(b, 1, h, w)


def _work_dtype(x: Tensor) -> torch.dtype:
    # float64 avoids the cancellation in E[x^2] - E[x]^2 (SSIM) that float32 shows on flat regions.
    return torch.float64


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_unit(x: Tensor) -> Tensor:
    return (x.to(_work_dtype(x)) + 1.0) / 2.0


def psnr(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB, data range 1 (images mapped from [-1, 1] to [0, 1]).

    Args:
        x, y: ``(B, C, H, W)`` in [-1, 1].
        mask: optional ``(1 or B, 1, H, W)`` weights, 1 = pixels that count. The MSE is taken over the masked
            pixels only (all channels).

    Returns:
        ``(B,)`` PSNR per image; ``inf`` where the images are identical (on the masked pixels).

    Raises:
        ValueError: shapes disagree, or the mask selects no pixel of some image.
    """
    _check_pair(x, y)
    sq = (_to_unit(x) - _to_unit(y)).pow(2)
    if mask is None:
        mse = sq.mean(dim=(1, 2, 3))
    else:
        m = _check_mask(mask, x)
        weight = m.sum(dim=(1, 2, 3)) * x.shape[1]
        if bool((weight <= 0).any()):
            raise ValueError("mask selects no pixels for at least one image")
        mse = (sq * m).sum(dim=(1, 2, 3)) / weight
    return (10.0 * torch.log10(1.0 / mse)).to(_out_dtype(x))


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    """Depthwise ``(channels, 1, size, size)`` normalised gaussian window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g)
    return window.to(dtype=like.dtype, device=like.device).expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Structural similarity (Wang et al. 2004), data range 1, per channel and averaged over channels.

    An ``11 x 11`` gaussian window with sigma 1.5 and ``K1 = 0.01``, ``K2 = 0.03``. The SSIM map is computed
    where the window lies entirely inside the image ("valid" filtering, as skimage and pytorch-msssim do), so
    it is ``(H - 10, W - 10)``; a mask is cropped by 5 pixels on every side to match.

    Args:
        x, y: ``(B, C, H, W)`` in [-1, 1], with ``H, W >= 11``.
        mask: optional ``(1 or B, 1, H, W)`` weights, 1 = pixels that count. The result is the mean of the SSIM
            map over the masked pixels (and channels).

    Returns:
        ``(B,)`` SSIM per image, 1 for identical images.

    Raises:
        ValueError: shapes disagree, the images are smaller than the window, or the mask selects no pixel
            (after cropping the border) of some image.
    """
    _check_pair(x, y)
    b, c, h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    m = _check_mask(mask, x) if mask is not None else None
    x1, y1 = _to_unit(x), _to_unit(y)
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, c, x1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=c)

    mu_x, mu_y = blur(x1), blur(y1)
    var_x = blur(x1 * x1) - mu_x.pow(2)
    var_y = blur(y1 * y1) - mu_y.pow(2)
    cov = blur(x1 * y1) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    if m is None:
        return ssim_map.mean(dim=(1, 2, 3)).to(_out_dtype(x))
    r = SSIM_WINDOW // 2
    m = m[:, :, r : h - r, r : w - r]
    weight = m.sum(dim=(1, 2, 3))
    if bool((weight <= 0).any()):
        raise ValueError(
            f"mask selects no pixels at least {r} pixels away from the border for at least one image"
        )
    return ((ssim_map * m).sum(dim=(1, 2, 3)) / (weight * c)).to(_out_dtype(x))

