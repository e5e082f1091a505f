"""Adversarial examples for the adversarial-defense benchmark: projected gradient descent in L-infinity.

PGD (Madry et al. 2018): start at a uniformly random point of the ``eps`` ball around the image, then take
``steps`` signed-gradient ascent steps on the classifier's cross-entropy, projecting back onto the ball and the
valid pixel range after each. ``eps`` and ``step_size`` are on the [0, 1] pixel scale (``8/255`` is the usual
CIFAR-10 budget); images are in the project's [-1, 1] convention, where the ball is ``2 eps`` wide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pgd_linf(model: nn.Module, images: Tensor, labels: Tensor, eps: float = 8 / 255, steps: int = 10,
             step_size: float | None = None, random_start: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
    """Untargeted L-infinity PGD against ``model`` (run in eval mode; its mode is restored after).

    Args:
        model: maps images ``(B, 3, H, W)`` in [-1, 1] to logits ``(B, C)``.
        images: clean images ``(B, 3, H, W)`` in [-1, 1].
        labels: true classes ``(B,)``.
        eps: radius of the ball on the [0, 1] pixel scale.
        steps: gradient steps (0: only the random start, or the clean images without one).
        step_size: step on the [0, 1] scale; default ``2.5 * eps / steps`` (Madry et al.'s rule of thumb).
        random_start: start from a uniform draw in the ball.
        generator: CPU generator for the random start (default: seeded with 0).

    Returns:
        adversarial images ``(B, 3, H, W)`` in [-1, 1], detached, with ``|x_adv - x| <= 2 eps`` in [-1, 1] units.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if not eps >= 0 or steps < 0:
        raise ValueError(f"need eps >= 0 and steps >= 0, got eps={eps}, steps={steps}")
    radius = 2.0 * eps  # [-1, 1] units
    alpha = 2.0 * (step_size if step_size is not None else 2.5 * eps / max(steps, 1))
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    clean = images.detach()
    x = clean.clone()
    if random_start and radius > 0:
        noise = (torch.rand(clean.shape, generator=generator) * 2 - 1) * radius
        x = (clean + noise.to(clean.device, clean.dtype)).clamp(-1, 1)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(model(x), labels.to(x.device))
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x = x + alpha * grad.sign()
                x = torch.min(torch.max(x, clean - radius), clean + radius).clamp(-1, 1)
            x = x.detach()
    finally:
        model.train(was_training)
    return x.detach()


__all__ = ["pgd_linf"]
