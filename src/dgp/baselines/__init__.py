"""Baselines that share DGP's reconstructor signature, for benchmarks.

Every baseline is a callable ``method(observation, degradation, class_id=None, generator=None)`` that returns a
record with at least ``image`` (the restoration, ``(1, 3, R, R)`` in [-1, 1]) and ``target`` (the observation
lifted to full size), like :class:`dgp.reconstruct.Result`; so a benchmark swaps them freely and post-processes
and scores them with :func:`dgp.pipeline.finish`.

* :mod:`dgp.baselines.dip`: Deep Image Prior (an encoder-decoder with skip connections fitted to one image);
* :mod:`dgp.baselines.inversion`: latent-only GAN inversion, the DGP ablations and a randomly initialised
  generator, all run by :class:`dgp.reconstruct.DGPReconstructor` with a modified schedule or prior;
* :mod:`dgp.baselines.classical`: bicubic upsampling, OpenCV inpainting (Telea, Navier-Stokes), non-local means
  denoising, and the observation itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dgp.degradations import Degradation


@runtime_checkable
class ReconstructionRecord(Protocol):
    """What every reconstructor returns (at least).

    Attributes:
        image: the restoration ``(1, 3, R, R)`` in [-1, 1].
        target: the observation lifted to full size ``(1, 3, R, R)`` (colorization keeps its lightness).
        timings: seconds spent per phase.
    """

    image: Tensor
    target: Tensor
    timings: dict[str, float]


class Reconstructor(Protocol):
    """One solver signature for DGP and the baselines (deepinv's ``Reconstructor.forward(y, physics)``)."""

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> ReconstructionRecord:
        """Restore ``observation`` ``(1, 3, h, w)`` in [-1, 1] (in the degradation's observation space)."""
        ...


@dataclass
class BaselineResult:
    """The record a non-GAN baseline returns.

    Attributes:
        image: restoration ``(1, 3, R, R)`` in [-1, 1], on the CPU.
        observation: the observation as given ``(1, 3, h, w)``.
        target: the observation lifted to full size ``(1, 3, R, R)``.
        class_id: always ``None`` (these methods know no classes); kept for a uniform record.
        history: one dict of loss terms per step (iterative methods).
        timings: seconds per phase.
        metrics: filled in by the caller (PSNR/SSIM ...).
    """

    image: Tensor
    observation: Tensor
    target: Tensor
    class_id: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def check_observation(observation: Tensor, degradation: Degradation, size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``observation`` is ``(1, 3, h, w)`` with ``(h, w)`` what ``degradation``
    observes of a ``size`` image."""
    if not isinstance(observation, Tensor) or observation.dim() != 4 or observation.shape[:2] != (1, 3):
        shape = tuple(observation.shape) if isinstance(observation, Tensor) else type(observation).__name__
        raise ValueError(f"observation must be (1, 3, h, w), got {shape}")
    expected = tuple(degradation.observation_size(size))
    if tuple(observation.shape[-2:]) != expected:
        raise ValueError(f"observation is {tuple(observation.shape[-2:])} but {degradation.name} on a {size} "
                         f"image observes {expected}")


__all__ = ["BaselineResult", "ReconstructionRecord", "Reconstructor", "check_observation"]
