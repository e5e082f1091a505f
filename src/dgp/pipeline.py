"""Assembles a restoration from files: input image -> observation -> reconstruction -> output and metrics.

Used by the CLI (and anything else that starts from image files). The algorithm itself lives in
:mod:`dgp.reconstruct`; this module only converts, post-processes and scores.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dgp.colorspace import merge_luminance
from dgp.defaults import TASKS  # noqa: F401  (re-exported)
from dgp.degradations import Chain, Degradation, Downsample, GaussianNoise, Grayscale, Identity, Mask
from dgp.imageio import load_image, load_rgb
from dgp.metrics import psnr, ssim
from dgp.priors.registry import Prior
from dgp.reconstruct import Callback, DGPReconstructor, Result
from dgp.schedule import Schedule, get_preset


def operators(degradation: Degradation) -> list[Degradation]:
    """The operators of a degradation, a chain flattened, in application order."""
    if isinstance(degradation, Chain):
        return [leaf for op in degradation.ops for leaf in operators(op)]
    return [degradation]


def preset_for(degradation: Degradation) -> str:
    """The preset that fits a degradation: inpainting when pixels are missing, then SR, colorization, ..."""
    kinds = {type(op) for op in operators(degradation)}
    if Mask in kinds:
        return "inpainting"
    if Downsample in kinds:
        return "sr"
    if Grayscale in kinds:
        return "colorization"
    if GaussianNoise in kinds:
        return "denoising"
    return "reconstruction"


def is_colorization(degradation: Degradation) -> bool:
    """True when the degradation only removes colour (the output then keeps the input's lightness)."""
    ops = [op for op in operators(degradation) if not isinstance(op, Identity)]
    return bool(ops) and all(isinstance(op, Grayscale) for op in ops)


def default_schedule(prior: Prior, preset: str, iterations_scale: float | None = None,
                     candidates: int | None = None) -> Schedule:
    """A preset scaled for ``prior``: its card's ``presets.iterations_scale`` unless one is given, and the
    generator learning rates multiplied by the card's ``presets.lr_G_scale``: one number for every preset, or
    a mapping from preset name to number (1 for presets it does not name, and when absent)."""
    defaults = prior.card.get("presets", {}) if isinstance(prior.card, dict) else {}
    scale = iterations_scale if iterations_scale is not None else float(defaults.get("iterations_scale", 1.0))
    lr_scale = defaults.get("lr_G_scale", 1.0)
    if isinstance(lr_scale, dict):
        lr_scale = lr_scale.get(preset, 1.0)
    schedule = get_preset(preset).scaled(iterations=scale, lr_G=float(lr_scale))
    n = candidates if candidates is not None else defaults.get("n_candidates")
    if n is not None:
        if int(n) < 0:
            raise ValueError(f"candidates must be >= 0, got {n}")
        schedule = dataclasses.replace(schedule, n_candidates=int(n))
    return schedule


def observation_from_input(image: Tensor, degradation: Degradation) -> Tensor:
    """Turn an already-degraded input (loaded at the observation size) into the exact observation.

    Deterministic pixel operators (grayscale, masks) are applied again, which leaves a truly degraded input
    unchanged and makes a colour or unmasked input consistent with the operator; resampling and noise are
    taken as already present.
    """
    x = image
    for op in operators(degradation):
        if isinstance(op, (Grayscale, Mask)):
            x = op(x)
    return x


@dataclass
class Restoration:
    """A restoration with its inputs, output and scores.

    Attributes:
        result: the reconstructor's record.
        output: the restored image ``(1, 3, R, R)`` in [-1, 1] (colorization: the input's lightness kept).
        observation: the observation ``(1, 3, h, w)``.
        reference: the clean image ``(1, 3, R, R)`` when known (``--reference`` or ``--degrade``).
        metrics: PSNR/SSIM of the output and of the observation against the reference (inside the hole for
            inpainting).
    """

    result: Result
    output: Tensor
    observation: Tensor
    reference: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def score(output: Tensor, observation_lifted: Tensor, reference: Tensor, degradation: Degradation
          ) -> dict[str, float]:
    """PSNR/SSIM of the output and of the (lifted) observation against the reference.

    For a degradation with missing pixels the scores count only the missing region (the paper's
    inpainting convention).
    """
    size = (reference.shape[-2], reference.shape[-1])
    hole = degradation.hole_mask(size)
    out = {}
    for name, img in (("", output), ("observation_", observation_lifted)):
        out[f"{name}psnr"] = float(psnr(img, reference, mask=hole)[0])
        out[f"{name}ssim"] = float(ssim(img, reference, mask=hole)[0])
    return out


def finish(result: Result, degradation: Degradation, reference: Tensor | None) -> tuple[Tensor, dict[str, float]]:
    """Post-process a result (colorization keeps the input's lightness) and score it when possible."""
    output = result.image
    if is_colorization(degradation):
        output = merge_luminance(result.image, result.target)
    metrics = score(output, result.target, reference, degradation) if reference is not None else {}
    return output, metrics


def restore(prior: Prior, degradation: Degradation, schedule: Schedule, *, observation: Tensor,
            reference: Tensor | None = None, class_id: int | None = None, seed: int = 0,
            callbacks: Sequence[Callback] = ()) -> Restoration:
    """Restore one observation ``(1, 3, h, w)`` in [-1, 1] (see :class:`Restoration`)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    result = DGPReconstructor(prior, schedule, callbacks)(observation, degradation, class_id, generator)
    output, metrics = finish(result, degradation, reference)
    result.metrics = metrics
    return Restoration(result, output, result.observation, reference, metrics, time.perf_counter() - start)


def load_inputs(prior: Prior, degradation: Degradation, image: str | Path, *, degrade: bool = False,
                reference: str | Path | None = None, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """Load ``image`` as an observation (or, with ``degrade``, as a clean image to degrade).

    Returns ``(observation (1, 3, h, w), reference (1, 3, R, R) or None)``. The degradation's random draws
    (noise) use a generator seeded from ``seed``.
    """
    size = (prior.resolution, prior.resolution)
    ref = load_image(reference, prior.resolution) if reference is not None else None
    if degrade:
        clean = load_image(image, prior.resolution)
        generator = torch.Generator().manual_seed(seed + 7919)
        return degradation.observe(clean, generator=generator), clean if ref is None else ref
    h, w = degradation.observation_size(size)
    if h != w:
        raise ValueError(f"observation size {h}x{w} is not square")
    return observation_from_input(load_image(image, h), degradation), ref


def check_mask_fits(mask: str | Path, image: str | Path, tolerance: float = 0.02) -> None:
    """Refuse a user mask whose aspect ratio differs from the input image's.

    The mask is centre-cropped and resized exactly as the image is (see :func:`dgp.degradations.mask_from_image`),
    which keeps them aligned only when both have the same shape; any size with the image's aspect ratio (within
    ``tolerance``, relative, for rounding) is accepted. Raises ``ValueError`` naming both sizes.
    """
    mw, mh = load_rgb(mask).size
    iw, ih = load_rgb(image).size
    if abs(mw * ih - mh * iw) > tolerance * mh * iw:
        raise ValueError(f"mask {mask} is {mw}x{mh} pixels but image {image} is {iw}x{ih}: the mask must have the "
                         "image's size (or at least its aspect ratio)")


def run_record(restoration: Restoration, **config: Any) -> dict[str, Any]:
    """The JSON record of a run: configuration, seed, timings and metrics."""
    r = restoration.result
    return {
        **config,
        "class_id": r.class_id,
        "timings": {**{k: round(v, 3) for k, v in r.timings.items()}, "total": round(restoration.seconds, 3)},
        "metrics": restoration.metrics,
        "final_losses": r.history[-1] if r.history else {},
        "steps": len(r.history),
    }
