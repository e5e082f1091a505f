"""Image conversion in one place: files <-> PIL <-> tensors in [-1, 1], grids, atomic writes."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class ImageError(ValueError):
    """An image file that cannot be used, with a message fit for a user."""


def load_rgb(path: str | Path) -> Image.Image:
    """Open any image file as 8-bit RGB, honouring EXIF orientation.

    Grayscale, palette, RGBA (composited on white) and 16-bit inputs are converted. Raises
    :class:`ImageError` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def to_square(im: Image.Image, resolution: int, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Centre-crop to a square on the long edge, then resize to ``resolution`` pixels."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), resample)
    return im


def pil_to_tensor(im: Image.Image) -> Tensor:
    """PIL RGB image -> ``(1, 3, H, W)`` float tensor in [-1, 1]."""
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(x: Tensor) -> Image.Image:
    """``(3, H, W)`` or ``(1, 3, H, W)`` tensor in [-1, 1] -> PIL RGB image."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def load_image(path: str | Path, resolution: int) -> Tensor:
    """Image file -> ``(1, 3, R, R)`` in [-1, 1], centre-cropped and resized."""
    return pil_to_tensor(to_square(load_rgb(path), resolution))


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> Tensor:
    """Tile ``(N, 3, H, W)`` images in [-1, 1] into one ``(3, H', W')`` image with white padding."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    grid = torch.ones(c, ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=images.dtype)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i].detach().cpu()
    return grid


def atomic_write(path: str | Path, write, overwrite: bool = True) -> None:
    """Write through ``write(tmp_path)`` to a temporary file in the same folder, then rename into place.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary user files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_image(x: Tensor, path: str | Path, overwrite: bool = True) -> None:
    """Save one image ``(3, H, W)``/``(1, 3, H, W)`` in [-1, 1] atomically (format from the suffix)."""
    im = tensor_to_pil(x)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    atomic_write(path, lambda tmp: im.save(tmp, format=fmt), overwrite=overwrite)


def save_grid(images: Tensor | Sequence[Tensor], path: str | Path, nrow: int | None = None,
              overwrite: bool = True, scale: int = 1) -> None:
    """Save a grid of ``(N, 3, H, W)`` images in [-1, 1], each pixel shown ``scale`` times larger."""
    if not isinstance(images, Tensor):
        images = torch.cat([im if im.dim() == 4 else im.unsqueeze(0) for im in images])
    if scale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    save_image(make_grid(images, nrow), path, overwrite=overwrite)
