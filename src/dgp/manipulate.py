"""Editing with a reconstruction: random jittering, category transfer and morphing.

All three render from the tuned generator of a :class:`~dgp.reconstruct.Result`. Images are
``(N, 3, R, R)`` in [-1, 1] on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dgp.defaults import JITTER_SIGMAS
from dgp.imageio import atomic_write, tensor_to_pil
from dgp.priors.registry import Prior
from dgp.reconstruct import Result


@torch.no_grad()
def jitter(prior: Prior, result: Result, sigmas: Sequence[float] = JITTER_SIGMAS, per_sigma: int = 8,
           generator: torch.Generator | None = None) -> Tensor:
    """Render ``z + sigma * eps`` with the tuned generator: ``(len(sigmas) * per_sigma, 3, R, R)``.

    Rows are grouped by sigma, in the order given. ``eps`` ~ N(0, I) is drawn from ``generator``.
    """
    if per_sigma < 1:
        raise ValueError(f"per_sigma must be at least 1, got {per_sigma}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    G = result.generator(prior)
    device = next(G.parameters()).device
    y = G.shared(torch.tensor([result.class_id], device=device))
    images = []
    for sigma in sigmas:
        eps = torch.randn(per_sigma, result.z.shape[1], generator=generator)
        z = (result.z + sigma * eps).to(device)
        images.append(G(z, y.expand(per_sigma, -1), use_in=result.use_in).cpu())
    return torch.cat(images)


@torch.no_grad()
def transfer(prior: Prior, result: Result, class_ids: Sequence[int]) -> Tensor:
    """Render the tuned generator and latent under other classes' embeddings: ``(len(class_ids), 3, R, R)``."""
    for c in class_ids:
        if not 0 <= c < prior.n_classes:
            raise ValueError(f"class id {c} out of range 0..{prior.n_classes - 1}")
    G = result.generator(prior)
    device = next(G.parameters()).device
    ids = torch.tensor(list(class_ids), device=device)
    z = result.z.to(device).expand(len(ids), -1)
    return G(z, G.shared(ids), use_in=result.use_in).cpu()


@torch.no_grad()
def morph(prior: Prior, a: Result, b: Result, frames: int = 9) -> Tensor:
    """Interpolate z, the class embedding and every generator weight and buffer from ``a`` to ``b``.

    Returns ``(frames, 3, R, R)``; frame 0 is ``a``'s reconstruction and the last frame ``b``'s.
    """
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    if a.use_in != b.use_in:
        raise ValueError("both reconstructions must use the same normalisation (instance norm or not)")
    G = a.generator(prior)
    device = next(G.parameters()).device
    state_a = {k: v.to(device) for k, v in a.generator_state.items()}
    state_b = {k: v.to(device) for k, v in b.generator_state.items()}
    out = []
    for alpha in torch.linspace(0.0, 1.0, frames).tolist():
        G.load_state_dict({k: torch.lerp(state_a[k].float(), state_b[k].float(), alpha).to(state_a[k].dtype)
                           if state_a[k].is_floating_point() else state_a[k] for k in state_a})
        z = torch.lerp(a.z, b.z, alpha).to(device)
        y = torch.lerp(a.class_embedding, b.class_embedding, alpha).to(device)
        G.reset_instance_norm(ready=a.use_in)
        out.append(G(z, y, use_in=a.use_in).cpu())
    return torch.cat(out)


def save_gif(frames: Tensor, path: str | Path, duration_ms: int = 120, overwrite: bool = True,
             boomerang: bool = True) -> None:
    """Write ``(N, 3, H, W)`` frames in [-1, 1] as a looping animated GIF (forward then back by default)."""
    images = [tensor_to_pil(f) for f in frames]
    if boomerang and len(images) > 2:
        images = images + images[-2:0:-1]
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration_ms, loop=0), overwrite=overwrite)
