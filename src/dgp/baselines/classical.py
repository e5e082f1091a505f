"""Classical restorations with DGP's reconstructor signature.

* :class:`ObservationBaseline`: the observation itself, lifted to full size (the grayscale input for
  colorization, the noisy or attacked input, the masked input): "no restoration";
* :class:`BicubicUpsampling`: bicubic interpolation of a downsampled observation;
* :class:`OpenCVInpainting`: OpenCV's Telea (fast marching) or Navier-Stokes inpainting of the missing pixels;
* :class:`NonLocalMeans`: OpenCV's non-local means denoising, its strength set from the known noise level.

The OpenCV methods need ``opencv-python-headless`` (``pip install 'dgp[bench]'``), imported only when used.
Each class has ``supports(degradation)``; calling one on a degradation it does not handle raises ``ValueError``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dgp.baselines import BaselineResult, check_observation
from dgp.degradations import Chain, Downsample, GaussianNoise, Identity, Mask

if TYPE_CHECKING:
    from dgp.degradations import Degradation


def _leaves(degradation: Degradation) -> list[Degradation]:
    if isinstance(degradation, Chain):
        return [leaf for op in degradation.ops for leaf in _leaves(op)]
    return [degradation]


def _only(degradation: Degradation, kind: type) -> list[Degradation]:
    """The operators of ``kind`` when the degradation holds nothing else (identities aside), else ``[]``."""
    ops = [op for op in _leaves(degradation) if not isinstance(op, Identity)]
    return ops if ops and all(isinstance(op, kind) for op in ops) else []


def import_cv2() -> Any:
    """``cv2``, or an ``ImportError`` that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise ImportError("this method needs OpenCV: pip install opencv-python-headless "
                          "(or pip install 'dgp[bench]')") from None
    return cv2


def to_uint8(x: Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` ``uint8`` RGB array."""
    return ((x[0].detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def from_uint8(a: np.ndarray) -> Tensor:
    """``(H, W, 3)`` ``uint8`` RGB array -> ``(1, 3, H, W)`` float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


class ClassicalMethod:
    """Base of the classical methods: checks the input, lifts the target and builds the record."""

    name = "classical"

    def __init__(self, resolution: int) -> None:
        self.resolution = int(resolution)

    def supports(self, degradation: Degradation) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def restore(self, observation: Tensor, degradation: Degradation) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> BaselineResult:
        """Restore ``observation`` ``(1, 3, h, w)`` in [-1, 1]; ``class_id`` and ``generator`` are unused."""
        size = (self.resolution, self.resolution)
        if not self.supports(degradation):
            raise ValueError(f"{self.name} does not handle the degradation {degradation.name!r}")
        check_observation(observation, degradation, size)
        start = time.perf_counter()
        observation = observation.detach().cpu()
        degradation = degradation.cpu()
        with torch.no_grad():
            target = degradation.lift(observation, size)
            image = self.restore(observation, degradation).clamp(-1, 1)
        return BaselineResult(image=image, observation=observation, target=target,
                              timings={"restore": time.perf_counter() - start})


class ObservationBaseline(ClassicalMethod):
    """The observation lifted to full size, unchanged: the floor every method should beat."""

    name = "input"

    def supports(self, degradation: Degradation) -> bool:
        return True

    def restore(self, observation: Tensor, degradation: Degradation) -> Tensor:
        return degradation.lift(observation, (self.resolution, self.resolution))


class BicubicUpsampling(ClassicalMethod):
    """Bicubic interpolation (``align_corners=False``) of a downsampled observation to full size."""

    name = "bicubic"

    def supports(self, degradation: Degradation) -> bool:
        return bool(_only(degradation, Downsample))

    def restore(self, observation: Tensor, degradation: Degradation) -> Tensor:
        size = (self.resolution, self.resolution)
        return F.interpolate(observation, size=size, mode="bicubic", align_corners=False)


class OpenCVInpainting(ClassicalMethod):
    """``cv2.inpaint`` of the degradation's missing pixels.

    Args:
        resolution: image side.
        method: ``"telea"`` (Telea 2004, fast marching) or ``"ns"`` (Bertalmio et al. 2001, Navier-Stokes).
        radius: neighbourhood radius in pixels.
    """

    def __init__(self, resolution: int, method: Literal["telea", "ns"] = "telea", radius: float = 3.0) -> None:
        super().__init__(resolution)
        if method not in ("telea", "ns"):
            raise ValueError(f"method must be 'telea' or 'ns', got {method!r}")
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.method = method
        self.radius = float(radius)
        self.name = "telea" if method == "telea" else "navier-stokes"

    def supports(self, degradation: Degradation) -> bool:
        return bool(_only(degradation, Mask))

    def restore(self, observation: Tensor, degradation: Degradation) -> Tensor:
        cv2 = import_cv2()
        hole = degradation.hole_mask((self.resolution, self.resolution))
        assert hole is not None
        mask = (hole[0, 0].numpy() > 0.5).astype(np.uint8) * 255
        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        return from_uint8(cv2.inpaint(to_uint8(observation), mask, self.radius, flag))


class NonLocalMeans(ClassicalMethod):
    """``cv2.fastNlMeansDenoisingColored`` with filter strength ``h = strength * 255 * sigma`` (luma and colour).

    Args:
        resolution: image side.
        strength: ``h`` as a multiple of the noise standard deviation in 8-bit levels.
        template_window, search_window: patch and search-window sides (odd).

    The defaults were picked for 32-pixel images on 40 CIFAR-10 *training* images (4 per class): strength 0.6-0.8
    of sigma with 3x3 patches in an 11x11 window gave the best PSNR at sigma 0.1 and 0.2 among strengths
    0.4-1.2 and windows 3/11, 5/13, 7/21.
    """

    name = "nl-means"

    def __init__(self, resolution: int, strength: float = 0.7, template_window: int = 3,
                 search_window: int = 11) -> None:
        super().__init__(resolution)
        if not strength > 0:
            raise ValueError(f"strength must be > 0, got {strength}")
        if template_window % 2 == 0 or search_window % 2 == 0:
            raise ValueError("template_window and search_window must be odd")
        self.strength = float(strength)
        self.template_window = int(template_window)
        self.search_window = int(search_window)

    def supports(self, degradation: Degradation) -> bool:
        return bool(_only(degradation, GaussianNoise))

    def restore(self, observation: Tensor, degradation: Degradation) -> Tensor:
        cv2 = import_cv2()
        sigma = float(np.sqrt(sum(op.sigma**2 for op in _only(degradation, GaussianNoise))))
        h = self.strength * 255.0 * sigma
        bgr = np.ascontiguousarray(to_uint8(observation)[..., ::-1])  # OpenCV's colour order
        out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, self.template_window, self.search_window)
        return from_uint8(out[..., ::-1])


__all__ = ["BicubicUpsampling", "ClassicalMethod", "NonLocalMeans", "ObservationBaseline", "OpenCVInpainting",
           "from_uint8", "import_cv2", "to_uint8"]
