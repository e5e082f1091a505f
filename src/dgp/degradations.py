"""Degradations phi as small composable operators.

DGP restores an image ``x`` from its observation ``x_hat = phi(x)`` by searching a latent ``z`` and
fine-tuning a generator ``G`` so that ``phi(G(z))`` matches ``x_hat``. Every operator here names its paths
plainly:

* :meth:`Degradation.forward` -- the differentiable path applied to the generator's output;
* :meth:`Degradation.observe` -- how an observation is made from a clean image (may differ from
  ``forward``: super-resolution observes with antialiased bicubic resizing but models the generated image
  with a lanczos filter, as the DGP code does; noise is added only to the observation);
* :meth:`Degradation.lift` -- observation space -> full-size comparison space (the discriminator needs
  full-size images): identity for most operators, bilinear upsampling after a downsample;
* :meth:`Degradation.observation_size` and :meth:`Degradation.hole_mask`.

Images are ``(B, 3, H, W)`` float tensors in [-1, 1]; sizes are ``(height, width)``. Masks given to
:class:`Mask` are *keep* masks, ``(1, 1, h, w)`` with 1 = keep and 0 = missing; :meth:`hole_mask` returns
the complement (1 = missing). Random masks are drawn by the factories from an explicit
:class:`torch.Generator`, separately from applying them.

Operators compose with :class:`Chain`, and :func:`parse_degradation` reads the short textual form used by
the command line, e.g. ``"down2+gray+hole"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "Degradation",
    "Identity",
    "Grayscale",
    "Mask",
    "Downsample",
    "GaussianNoise",
    "Chain",
    "center_hole",
    "mask_from_image",
    "random_boxes",
    "free_form_strokes",
    "lanczos2_kernel",
    "parse_degradation",
    "DEGRADATIONS",
    "PRESET_DEGRADATIONS",
    "DEFAULT_SEED",
    "GRAY_WEIGHTS",
    "DOWNSAMPLE_FACTORS",
]

Size = tuple[int, int]

#: Seed of the fresh generator used when a random draw is asked for without a generator.
DEFAULT_SEED = 0
#: ITU-R BT.601 luma weights used by the DGP code (R, G, B).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
#: Supported super-resolution factors.
DOWNSAMPLE_FACTORS = (2, 4, 8)


# --------------------------------------------------------------------------------------------- checks


def _check_image(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_size(size: Sequence[int], name: str = "size") -> Size:
    try:
        h, w = (int(s) for s in size)
        valid = all(int(s) == s for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair of positive integers, got {size!r}") from None
    if not valid or h < 1 or w < 1:
        raise ValueError(f"{name} must be a (height, width) pair of positive integers, got {size!r}")
    return h, w


def _resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(DEFAULT_SEED)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _rand(n: int, generator: torch.Generator) -> list[float]:
    """``n`` uniform draws in [0, 1) from ``generator`` (on its own device), as Python floats."""
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).tolist()


# ---------------------------------------------------------------------------------------- base class


class Degradation(nn.Module):
    """A degradation operator phi, with a differentiable path and an observation path.

    Subclasses implement :meth:`forward`; the defaults make :meth:`observe` equal to :meth:`forward`,
    :meth:`lift` the identity, sizes unchanged and no missing pixels.

    Attributes:
        name: short textual form, e.g. ``"gray"``, ``"hole"``, ``"down4"``, ``"noise0.1"``; parsing it with
            :func:`parse_degradation` gives an equivalent operator (except for random masks, which depend on
            the generator).
        observe_is_forward: True when :meth:`observe` equals :meth:`forward` exactly.
    """

    name: str = "degradation"
    observe_is_forward: bool = True

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Differentiable path: clean ``(B, 3, H, W)`` in [-1, 1] -> observation space."""
        raise NotImplementedError

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Make the observation of a clean ``(B, 3, H, W)`` image in [-1, 1] (no gradient).

        Args:
            x: clean images.
            generator: source of randomness for random operators; ``None`` uses a fresh generator seeded
                with :data:`DEFAULT_SEED` (deterministic). Ignored by deterministic operators.
        """
        with torch.no_grad():
            return self.forward(x).detach()

    def lift(self, y: Tensor, size: Size) -> Tensor:
        """Observation space -> full-size comparison space ``(B, 3, *size)``; differentiable.

        The identity here; raises ValueError if ``y`` is not already of ``size``.
        """
        _check_image(y, "y")
        size = _check_size(size)
        if tuple(y.shape[-2:]) != size:
            raise ValueError(f"{self.name}: y has size {tuple(y.shape[-2:])}, expected {size}")
        return y

    def observation_size(self, size: Size) -> Size:
        """Size ``(h, w)`` of the observation of a clean image of ``size``."""
        return _check_size(size)

    def hole_mask(self, size: Size) -> Tensor | None:
        """``(1, 1, *size)`` float mask, 1 = missing pixel at clean size; ``None`` if nothing is missing."""
        _check_size(size)
        return None

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class Identity(Degradation):
    """No degradation: reconstruction and adversarial defense."""

    name = "id"

    def forward(self, x: Tensor) -> Tensor:
        """Returns ``x`` unchanged, ``(B, 3, H, W)``."""
        _check_image(x)
        return x


# -------------------------------------------------------------------------------------------- gray


class Grayscale(Degradation):
    """Luma ``0.2989 R + 0.5870 G + 0.1140 B`` repeated on three channels (colorization).

    The weights are applied in [0, 1] pixel space (``x`` is mapped from [-1, 1] and back), which equals
    applying them in [-1, 1] space up to an offset of ``1 - sum(weights) = 1e-4``.
    """

    name = "gray"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> gray ``(B, 3, H, W)`` in [-1, 1], differentiable."""
        _check_image(x)
        weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        gray01 = (((x + 1.0) / 2.0) * weights).sum(dim=1, keepdim=True)
        return (gray01 * 2.0 - 1.0).repeat(1, 3, 1, 1)


# -------------------------------------------------------------------------------------------- masks


def _check_keep_mask(mask: Tensor, name: str = "mask") -> Tensor:
    """Validate a binary keep mask and return it as float ``(1, 1, h, w)``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[None]
    if mask.dim() != 4 or mask.shape[:2] != (1, 1):
        raise ValueError(f"{name} must have shape (h, w), (1, h, w) or (1, 1, h, w), got {tuple(mask.shape)}")
    mask = mask.float() if not mask.is_floating_point() else mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must contain only 0 (missing) and 1 (keep)")
    if bool((mask == 1).all()):
        raise ValueError(f"{name} has no missing pixels (all ones); use Identity for no degradation")
    if bool((mask == 0).all()):
        raise ValueError(f"{name} marks every pixel as missing (all zeros)")
    return mask


def _resize_mask(mask: Tensor, size: Size) -> Tensor:
    """Binary ``(1, 1, h, w)`` -> ``(1, 1, *size)`` by nearest-neighbour (pixel-centre aligned)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="nearest-exact")


class Mask(Degradation):
    """Multiply by a keep mask: 1 = keep, 0 = missing (inpainting).

    Missing pixels become 0, i.e. mid-gray in [-1, 1], in both the generated image and the observation, so
    they do not contribute to a pixel loss. The stored ``(1, 1, h, w)`` mask is resized by nearest neighbour
    to the input size when they differ, so one mask also works after a downsample in a :class:`Chain`.

    Args:
        mask: binary keep mask, ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)``, from :func:`center_hole`,
            :func:`mask_from_image`, :func:`random_boxes` or :func:`free_form_strokes`.
        name: textual form (``"hole"``, ``"mask"``, ``"boxes3"``, ...).
    """

    mask: Tensor

    def __init__(self, mask: Tensor, name: str = "mask") -> None:
        super().__init__()
        self.register_buffer("mask", _check_keep_mask(mask).detach().clone())
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)`` with missing pixels set to 0; differentiable."""
        _check_image(x)
        keep = _resize_mask(self.mask, tuple(x.shape[-2:])).to(dtype=x.dtype, device=x.device)
        return x * keep

    def hole_mask(self, size: Size) -> Tensor:
        """``(1, 1, *size)``, 1 = missing; the stored mask's complement resized to ``size``."""
        return 1.0 - _resize_mask(self.mask, _check_size(size))


def center_hole(h: int, w: int) -> Tensor:
    """Keep mask ``(1, 1, h, w)`` with a centred square hole of side ``floor(min(h, w) / 3)`` (DGP's).

    The hole starts at ``((h - side) // 2, (w - side) // 2)``. Returns float, 1 = keep, 0 = missing.
    """
    h, w = _check_size((h, w))
    side = min(h, w) // 3
    if side < 1:
        raise ValueError(f"image of {h}x{w} pixels is too small for a centre hole (need at least 3x3)")
    top, left = (h - side) // 2, (w - side) // 2
    mask = torch.ones(1, 1, h, w)
    mask[..., top : top + side, left : left + side] = 0.0
    return mask


def _open_mask_image(source: str | Path | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        im = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"mask image not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                im = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read mask image {path}: {exc}") from None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas count as black (kept): masks painted on a transparent layer work as expected.
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return im.convert("L")


def mask_from_image(
    source: str | Path | Image.Image,
    size: Size,
    *,
    missing_is_white: bool = True,
    max_gray_fraction: float = 0.1,
) -> Tensor:
    """Read a user mask image as a keep mask ``(1, 1, *size)``.

    Convention (the common one for inpainting masks): **white / nonzero pixels mark missing pixels** and
    black pixels are kept. Pass ``missing_is_white=False`` for masks where black marks the missing region.
    Color images are converted to gray; transparent pixels count as black.

    The image is centre-cropped to the aspect ratio of ``size`` (as :func:`dgp.imageio.to_square` crops the
    input image, so a mask drawn on a non-square photo stays aligned with it), resized to ``size`` with
    bilinear filtering and thresholded at mid-gray, so it need not have the image's size. It must be
    binary-ish: at most ``max_gray_fraction`` of its pixels may be mid-tones (values in [32, 223]), which
    allows antialiased or JPEG-compressed edges.

    Args:
        source: path of the image file, or a PIL image.
        size: ``(height, width)`` of the clean image.
        missing_is_white: True if white marks missing pixels.
        max_gray_fraction: tolerated fraction of mid-tone pixels.

    Returns:
        float ``(1, 1, *size)``, 1 = keep, 0 = missing.

    Raises:
        ValueError: missing/unreadable file, a mask that is not binary, or one with no missing pixel or with
            every pixel missing (after resizing).
    """
    h, w = _check_size(size)
    gray = _open_mask_image(source)
    values = np.asarray(gray, dtype=np.uint8)
    mid = float(((values >= 32) & (values <= 223)).mean())
    if mid > max_gray_fraction:
        raise ValueError(
            f"mask image does not look binary: {mid:.0%} of its pixels are mid-gray "
            f"(expected at most {max_gray_fraction:.0%}); use white for missing pixels and black for kept ones"
        )
    gw, gh = gray.size
    if gw * h > gh * w:  # wider than the target: crop the width, centred
        cw = max(1, round(gh * w / h))
        gray = gray.crop(((gw - cw) // 2, 0, (gw - cw) // 2 + cw, gh))
    elif gw * h < gh * w:  # taller: crop the height, centred
        ch = max(1, round(gw * h / w))
        gray = gray.crop((0, (gh - ch) // 2, gw, (gh - ch) // 2 + ch))
    if gray.size != (w, h):
        gray = gray.resize((w, h), Image.Resampling.BILINEAR)
    missing = torch.from_numpy(np.asarray(gray, dtype=np.float32) >= 128.0)
    if not missing_is_white:
        missing = ~missing
    what = "white" if missing_is_white else "black"
    if not bool(missing.any()):
        raise ValueError(f"mask image marks no pixel as missing (expected {what} pixels for the missing region)")
    if bool(missing.all()):
        raise ValueError(f"mask image marks every pixel as missing ({what} everywhere)")
    return (~missing).float()[None, None]


def random_boxes(
    h: int,
    w: int,
    n: int = 3,
    generator: torch.Generator | None = None,
    *,
    min_frac: float = 0.1,
    max_frac: float = 0.3,
) -> Tensor:
    """Keep mask ``(1, 1, h, w)`` with ``n`` random rectangular holes.

    Each box has a height and width drawn uniformly in ``[min_frac, max_frac]`` times the image's height and
    width (at least one pixel) and a uniform position inside the image. Boxes may overlap.

    Args:
        h, w: image size.
        n: number of boxes, at least 1.
        generator: source of randomness; ``None`` uses a fresh generator seeded with :data:`DEFAULT_SEED`.
        min_frac, max_frac: box side range as a fraction of the image side, ``0 < min_frac <= max_frac < 1``.

    Returns:
        float ``(1, 1, h, w)``, 1 = keep, 0 = missing.
    """
    h, w = _check_size((h, w))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < min_frac <= max_frac < 1.0:
        raise ValueError(f"need 0 < min_frac <= max_frac < 1, got min_frac={min_frac}, max_frac={max_frac}")
    g = _resolve_generator(generator)
    draws = _rand(4 * n, g)
    mask = torch.ones(1, 1, h, w)
    for i in range(n):
        u_h, u_w, u_top, u_left = draws[4 * i : 4 * i + 4]
        bh = max(1, round((min_frac + (max_frac - min_frac) * u_h) * h))
        bw = max(1, round((min_frac + (max_frac - min_frac) * u_w) * w))
        top = min(h - bh, int(u_top * (h - bh + 1)))
        left = min(w - bw, int(u_left * (w - bw + 1)))
        mask[..., top : top + bh, left : left + bw] = 0.0
    return mask


def free_form_strokes(
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    *,
    strokes: int = 4,
    max_vertices: int = 8,
    max_length: float = 0.25,
    min_width: float = 0.03,
    max_width: float = 0.08,
) -> Tensor:
    """Keep mask ``(1, 1, h, w)`` of random brush strokes (free-form inpainting masks).

    Each stroke starts at a uniform point and visits 1 to ``max_vertices`` further vertices, each at a
    uniform angle and a distance up to ``max_length * min(h, w)`` (clipped to the image); it is painted with
    a round brush of diameter uniform in ``[min_width, max_width] * min(h, w)`` (at least one pixel).

    Args:
        h, w: image size.
        generator: source of randomness; ``None`` uses a fresh generator seeded with :data:`DEFAULT_SEED`.
        strokes: number of strokes, at least 1.
        max_vertices: most vertices after the start of a stroke, at least 1.
        max_length: longest segment, fraction of ``min(h, w)``.
        min_width, max_width: brush diameter range, fraction of ``min(h, w)``.

    Returns:
        float ``(1, 1, h, w)``, 1 = keep, 0 = missing.
    """
    h, w = _check_size((h, w))
    if not isinstance(strokes, int) or strokes < 1:
        raise ValueError(f"strokes must be a positive integer, got {strokes!r}")
    if not isinstance(max_vertices, int) or max_vertices < 1:
        raise ValueError(f"max_vertices must be a positive integer, got {max_vertices!r}")
    if not max_length > 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not 0.0 < min_width <= max_width:
        raise ValueError(f"need 0 < min_width <= max_width, got min_width={min_width}, max_width={max_width}")
    g = _resolve_generator(generator)
    side = min(h, w)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, w) + 0.5
    missing = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(strokes):
        u_y, u_x, u_n, u_width = _rand(4, g)
        y0, x0 = u_y * h, u_x * w
        n_vertices = 1 + min(max_vertices - 1, int(u_n * max_vertices))
        radius = max(0.5, (min_width + (max_width - min_width) * u_width) * side / 2.0)
        for _ in range(n_vertices):
            u_angle, u_length = _rand(2, g)
            angle = 2.0 * math.pi * u_angle
            length = u_length * max_length * side
            y1 = min(max(y0 + length * math.sin(angle), 0.0), float(h))
            x1 = min(max(x0 + length * math.cos(angle), 0.0), float(w))
            missing |= _segment_distance(ys, xs, (y0, x0), (y1, x1)) <= radius
            y0, x0 = y1, x1
    return (~missing).float()[None, None]


def _segment_distance(ys: Tensor, xs: Tensor, p0: tuple[float, float], p1: tuple[float, float]) -> Tensor:
    """Distance of every pixel centre ``(ys, xs)`` (broadcast to ``(h, w)``) to the segment ``p0 -> p1``."""
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    length_sq = dy * dy + dx * dx
    if length_sq == 0.0:
        t = torch.zeros(())
    else:
        t = (((ys - p0[0]) * dy + (xs - p0[1]) * dx) / length_sq).clamp(0.0, 1.0)
    return torch.sqrt((ys - (p0[0] + t * dy)) ** 2 + (xs - (p0[1] + t * dx)) ** 2)


# ---------------------------------------------------------------------------------------- downsample


def lanczos2_kernel(factor: int) -> Tensor:
    """The ``(4 factor, 4 factor)`` lanczos-2 kernel, phase 0.5, of Deep Image Prior's ``Downsampler``.

    Taps sit at distances ``|i + 0.5 - c| / factor`` from the centre ``c = 2 factor + 1`` (``i = 1 .. 4
    factor``); each 1-D tap is ``2 sin(pi d) sin(pi d / 2) / (pi d)^2``; the 2-D kernel is their outer
    product, normalised to sum 1. Returned as float64.
    """
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    support = 2.0
    width = 4 * factor
    center = (width + 2) / 2.0
    d = (torch.arange(1, width + 1, dtype=torch.float64) + 0.5 - center).abs() / factor
    safe = torch.where(d == 0, torch.ones_like(d), d)
    taps = support * torch.sin(math.pi * safe) * torch.sin(math.pi * safe / support) / (math.pi * safe) ** 2
    taps = torch.where(d == 0, torch.ones_like(d), taps)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


class Downsample(Degradation):
    """Downsampling by ``factor`` in {2, 4, 8} (super-resolution).

    * observation: antialiased bicubic resizing (``F.interpolate(mode="bicubic", antialias=True)``, sampling
      grid aligned with pixel centres), clipped to [-1, 1];
    * forward (generated image): Deep Image Prior's lanczos-2 ``Downsampler`` as the DGP code uses it --
      a fixed depthwise convolution with the ``(4 factor)^2`` kernel of :func:`lanczos2_kernel` and stride
      ``factor``, after replication padding of ``3 factor / 2`` pixels (``preserve_size``);
    * lift: bilinear upsampling (``align_corners=False``) back to full size.

    A clean ``(H, W)`` image gives a ``(H // factor, W // factor)`` observation on both paths.
    """

    kernel: Tensor
    observe_is_forward = False

    def __init__(self, factor: int) -> None:
        super().__init__()
        if isinstance(factor, bool) or factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"factor must be one of {DOWNSAMPLE_FACTORS}, got {factor!r}")
        self.factor = int(factor)
        self.name = f"down{self.factor}"
        self.register_buffer("kernel", lanczos2_kernel(self.factor).float()[None, None])

    def _check_input_size(self, x: Tensor) -> None:
        h, w = x.shape[-2:]
        if h < self.factor or w < self.factor:
            raise ValueError(f"{self.name}: image of {h}x{w} pixels is smaller than the factor {self.factor}")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H // factor, W // factor)`` by the lanczos-2 filter; differentiable."""
        _check_image(x)
        self._check_input_size(x)
        pad = (self.kernel.shape[-1] - self.factor) // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        weight = self.kernel.to(dtype=x.dtype, device=x.device).expand(x.shape[1], 1, -1, -1)
        return F.conv2d(padded, weight, stride=self.factor, groups=x.shape[1])

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H // factor, W // factor)`` by antialiased bicubic, in [-1, 1]."""
        _check_image(x)
        self._check_input_size(x)
        with torch.no_grad():
            y = F.interpolate(
                x,
                scale_factor=1.0 / self.factor,
                mode="bicubic",
                antialias=True,
                align_corners=False,
                recompute_scale_factor=False,
            )
            return y.clamp(-1.0, 1.0)

    def lift(self, y: Tensor, size: Size) -> Tensor:
        """``(B, 3, h, w)`` -> ``(B, 3, *size)`` by bilinear upsampling; differentiable."""
        _check_image(y, "y")
        size = _check_size(size)
        expected = self.observation_size(size)
        if tuple(y.shape[-2:]) != expected:
            raise ValueError(f"{self.name}: y has size {tuple(y.shape[-2:])}, expected {expected} for {size}")
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def observation_size(self, size: Size) -> Size:
        h, w = _check_size(size)
        if h < self.factor or w < self.factor:
            raise ValueError(f"{self.name}: size {(h, w)} is smaller than the factor {self.factor}")
        return h // self.factor, w // self.factor


# -------------------------------------------------------------------------------------------- noise


class GaussianNoise(Degradation):
    """Additive white gaussian noise (denoising).

    ``sigma`` is the standard deviation on the [0, 1] pixel scale, i.e. ``2 sigma`` in the [-1, 1] space of
    the tensors. The differentiable path is the identity: the generated image is compared to the noisy
    observation directly. The observation adds noise from the given generator and clips to [-1, 1].
    """

    observe_is_forward = False

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a finite number, got {sigma!r}")
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma must be in [0, 1] (pixel scale [0, 1]), got {sigma}")
        self.sigma = float(sigma)
        self.name = f"noise{self.sigma:g}"

    def forward(self, x: Tensor) -> Tensor:
        """Identity on ``(B, 3, H, W)``."""
        _check_image(x)
        return x

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x + 2 sigma n`` with ``n ~ N(0, 1)`` drawn from ``generator``, clipped to [-1, 1]."""
        _check_image(x)
        g = _resolve_generator(generator)
        with torch.no_grad():
            noise = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
            return (x + 2.0 * self.sigma * noise).clamp(-1.0, 1.0)


# -------------------------------------------------------------------------------------------- chain


class Chain(Degradation):
    """Composition of operators, applied left to right: ``Chain([a, b])(x) == b(a(x))``.

    ``observe`` composes the operators' observations (sharing the generator, in order); ``lift`` composes
    their lifts in reverse order at the intermediate sizes; ``hole_mask`` marks a pixel missing if any
    operator does. ``name`` joins the operators' names with ``"+"``.
    """

    def __init__(self, ops: Sequence[Degradation]) -> None:
        super().__init__()
        ops = list(ops)
        if not ops:
            raise ValueError("Chain needs at least one operator, got none")
        for i, op in enumerate(ops):
            if not isinstance(op, Degradation):
                raise TypeError(f"ops[{i}] must be a Degradation, got {type(op).__name__}")
        self.ops = nn.ModuleList(ops)
        self.name = "+".join(op.name for op in ops)
        self.observe_is_forward = all(op.observe_is_forward for op in ops)

    def forward(self, x: Tensor) -> Tensor:
        """Applies each operator's differentiable path in order."""
        for op in self.ops:
            x = op(x)
        return x

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Applies each operator's observation path in order, sharing ``generator``."""
        g = _resolve_generator(generator)
        for op in self.ops:
            x = op.observe(x, g)
        return x

    def _sizes(self, size: Size) -> list[Size]:
        """Input size of every operator followed by the final observation size."""
        sizes = [_check_size(size)]
        for op in self.ops:
            sizes.append(op.observation_size(sizes[-1]))
        return sizes

    def observation_size(self, size: Size) -> Size:
        return self._sizes(size)[-1]

    def lift(self, y: Tensor, size: Size) -> Tensor:
        """Lifts back through the operators in reverse order, each to its own input size."""
        sizes = self._sizes(size)
        for op, op_size in zip(reversed(self.ops), reversed(sizes[:-1])):
            y = op.lift(y, op_size)
        return y

    def hole_mask(self, size: Size) -> Tensor | None:
        size = _check_size(size)
        masks = [m for m in (op.hole_mask(size) for op in self.ops) if m is not None]
        if not masks:
            return None
        return torch.stack(masks).amax(dim=0)


# -------------------------------------------------------------------------------------------- parsing

#: Task presets: task name -> textual degradation.
PRESET_DEGRADATIONS: dict[str, str] = {
    "reconstruction": "id",
    "colorization": "gray",
    "inpainting": "hole",
    "sr2": "down2",
    "sr4": "down4",
    "sr8": "down8",
    "hybrid": "down2+gray+hole",
    "denoise": "noise0.1",
}

_DEFAULT_BOXES = 3
_VALID_TOKENS = "id, identity, gray, hole, mask, boxes, boxesN, strokes, down2, down4, down8, noiseS (e.g. noise0.1)"


def _need_size(token: str, size: Size | None) -> Size:
    if size is None:
        raise ValueError(f"degradation {token!r} needs the image size; pass size=(height, width)")
    return _check_size(size)


def _build_token(
    token: str,
    size: Size | None,
    generator: torch.Generator | None,
    mask_path: str | Path | None,
) -> Degradation:
    if token in ("id", "identity"):
        return Identity()
    if token == "gray":
        return Grayscale()
    if token == "hole":
        return Mask(center_hole(*_need_size(token, size)), name="hole")
    if token == "mask":
        if mask_path is None:
            raise ValueError("degradation 'mask' needs a mask image; pass mask_path")
        return Mask(mask_from_image(mask_path, _need_size(token, size)), name="mask")
    if token == "strokes":
        return Mask(free_form_strokes(*_need_size(token, size), generator), name="strokes")
    match = re.fullmatch(r"boxes(\d*)", token)
    if match:
        n = int(match.group(1)) if match.group(1) else _DEFAULT_BOXES
        if n < 1:
            raise ValueError(f"degradation {token!r}: the number of boxes must be at least 1")
        return Mask(random_boxes(*_need_size(token, size), n, generator), name=f"boxes{n}")
    match = re.fullmatch(r"down(\d+)", token)
    if match:
        factor = int(match.group(1))
        if factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"degradation {token!r}: factor must be one of {DOWNSAMPLE_FACTORS}, got {factor}")
        return Downsample(factor)
    match = re.fullmatch(r"noise(.+)", token)
    if match:
        try:
            sigma = float(match.group(1))
        except ValueError:
            raise ValueError(f"degradation {token!r}: expected noiseS with a number S, e.g. noise0.1") from None
        return GaussianNoise(sigma)
    raise ValueError(
        f"unknown degradation {token!r}; valid tokens: {_VALID_TOKENS}; "
        f"presets: {', '.join(PRESET_DEGRADATIONS)}"
    )


def parse_degradation(
    text: str,
    size: Size | None = None,
    generator: torch.Generator | None = None,
    mask_path: str | Path | None = None,
) -> Degradation:
    """Build an operator from its short textual form, e.g. ``"down2+gray+hole"`` or a preset name.

    Tokens are joined by ``"+"`` and applied left to right:
    ``id``/``identity``, ``gray``, ``hole`` (centre hole), ``mask`` (user mask image at ``mask_path``, white =
    missing), ``boxes``/``boxesN`` (N random boxes, default 3), ``strokes`` (random brush strokes),
    ``down2``/``down4``/``down8``, ``noiseS`` (gaussian noise, sigma S on the [0, 1] scale). A key of
    :data:`PRESET_DEGRADATIONS` (e.g. ``"inpainting"``) stands for its expansion.

    Args:
        text: the textual form (case and surrounding spaces are ignored).
        size: ``(height, width)`` of the clean image; needed by the mask tokens.
        generator: source of randomness for random masks, shared by the tokens in order; ``None`` uses a
            fresh generator seeded with :data:`DEFAULT_SEED`.
        mask_path: mask image for the ``mask`` token.

    Returns:
        the operator; a :class:`Chain` when there are several tokens.

    Raises:
        ValueError: empty text, an unknown token (the message lists the valid ones), a missing size or mask.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = text.strip().lower()
    text = PRESET_DEGRADATIONS.get(text, text)
    tokens = [t.strip() for t in text.split("+")]
    if not text or any(not t for t in tokens):
        raise ValueError(f"empty degradation token in {text!r}; valid tokens: {_VALID_TOKENS}")
    generator = _resolve_generator(generator)
    ops = [_build_token(t, size, generator, mask_path) for t in tokens]
    return ops[0] if len(ops) == 1 else Chain(ops)


DegradationFactory = Callable[[Size, torch.Generator | None], Degradation]


def _registry_entry(token: str) -> DegradationFactory:
    def factory(size: Size, generator: torch.Generator | None = None) -> Degradation:
        return parse_degradation(token, size, generator)

    factory.__doc__ = f"Build the {token!r} degradation for a clean image of ``size``."
    return factory


#: Every operator kind that needs no external file: name -> ``factory(size, generator=None)``. Each name
#: is a valid :func:`parse_degradation` token. (``mask`` is absent: it needs a mask image.)
DEGRADATIONS: dict[str, DegradationFactory] = {
    token: _registry_entry(token)
    for token in ("id", "gray", "hole", "boxes", "strokes", "down2", "down4", "down8", "noise0.1")
}
