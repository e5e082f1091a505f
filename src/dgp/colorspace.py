"""sRGB <-> CIE L*a*b* conversion (D65 white) and the colorization output convention.

All RGB tensors are ``(B, 3, H, W)`` in [-1, 1] (the range of the generator). Lab tensors are
``(B, 3, H, W)`` with ``L`` in [0, 100] and ``a``, ``b`` roughly in [-128, 127].

The conversion follows the standard formulas: sRGB gamma decoding (IEC 61966-2-1), the linear-RGB to
XYZ matrix for D65, and the CIE ``f(t)`` with ``epsilon = 216/24389`` and ``kappa = 24389/27``. The white
point is taken as the image of RGB white under the matrix, so that white maps to exactly ``L = 100,
a = b = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rgb_to_lab", "lab_to_rgb", "merge_luminance"]

# Linear sRGB -> XYZ (D65), IEC 61966-2-1.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_EPSILON = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0


def _check_three_channels(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _matrices(like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The forward matrix, its exact inverse and the white point, in ``like``'s dtype and device."""
    m = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    m_inv = torch.linalg.inv(m)
    white = m.sum(dim=1)
    return (
        m.to(dtype=like.dtype, device=like.device),
        m_inv.to(dtype=like.dtype, device=like.device),
        white.to(dtype=like.dtype, device=like.device),
    )


def _apply_matrix(m: Tensor, x: Tensor) -> Tensor:
    """``(3, 3)`` matrix applied to the channel axis of ``(B, 3, H, W)``."""
    return torch.einsum("ij,bjhw->bihw", m, x)


def _srgb_to_linear(c: Tensor) -> Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055).pow(2.4))


def _linear_to_srgb(c: Tensor) -> Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055)


def _f(t: Tensor) -> Tensor:
    # clamp_min keeps the unused branch finite so that gradients stay finite.
    return torch.where(t > _EPSILON, t.clamp_min(_EPSILON).pow(1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)


def _f_inv(f: Tensor) -> Tensor:
    cube = f.pow(3)
    return torch.where(cube > _EPSILON, cube, (116.0 * f - 16.0) / _KAPPA)


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB ``(B, 3, H, W)`` in [-1, 1] -> CIE Lab ``(B, 3, H, W)`` (``L`` in [0, 100]), D65 white.

    Values outside [-1, 1] are clipped before conversion. Differentiable.
    """
    _check_three_channels(x, "x")
    m, _, white = _matrices(x)
    linear = _srgb_to_linear((x + 1.0) / 2.0)
    xyz = _apply_matrix(m, linear) / white.view(1, 3, 1, 1)
    fx, fy, fz = _f(xyz).unbind(dim=1)
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((lightness, a, b), dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab ``(B, 3, H, W)`` (``L`` in [0, 100]), D65 white -> sRGB ``(B, 3, H, W)`` in [-1, 1].

    Colors outside the sRGB gamut are clipped to [-1, 1]. Differentiable.
    """
    _check_three_channels(lab, "lab")
    _, m_inv, white = _matrices(lab)
    lightness, a, b = lab.unbind(dim=1)
    fy = (lightness + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    xyz = _f_inv(torch.stack((fx, fy, fz), dim=1)) * white.view(1, 3, 1, 1)
    rgb01 = _linear_to_srgb(_apply_matrix(m_inv, xyz))
    return rgb01 * 2.0 - 1.0


def merge_luminance(result: Tensor, reference: Tensor) -> Tensor:
    """Keep the lightness of ``reference`` and the colors of ``result`` (DGP's colorization output).

    Both images are converted to Lab; the output has ``L`` from ``reference`` and ``a``, ``b`` from
    ``result``, converted back to RGB.

    Args:
        result: ``(B, 3, H, W)`` in [-1, 1], the restored (colored) image.
        reference: ``(B, 3, H, W)`` or ``(B, 1, H, W)`` in [-1, 1], the grayscale input; a single channel is
            repeated on three channels. Its batch size may be 1 (broadcast over ``result``).

    Returns:
        ``(B, 3, H, W)`` RGB in [-1, 1].
    """
    _check_three_channels(result, "result")
    if not isinstance(reference, Tensor) or reference.dim() != 4 or reference.shape[1] not in (1, 3):
        shape = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
        raise ValueError(f"reference must have shape (B, 3, H, W) or (B, 1, H, W), got {shape}")
    if reference.shape[-2:] != result.shape[-2:]:
        raise ValueError(
            f"reference size {tuple(reference.shape[-2:])} must match result size {tuple(result.shape[-2:])}"
        )
    if reference.shape[0] not in (1, result.shape[0]):
        raise ValueError(f"reference batch size must be 1 or {result.shape[0]}, got {reference.shape[0]}")
    if reference.shape[1] == 1:
        reference = reference.expand(-1, 3, -1, -1)
    reference = reference.to(dtype=result.dtype, device=result.device).expand(result.shape[0], -1, -1, -1)
    lab_result = rgb_to_lab(result)
    lab_reference = rgb_to_lab(reference)
    merged = torch.cat((lab_reference[:, :1], lab_result[:, 1:]), dim=1)
    return lab_to_rgb(merged)
