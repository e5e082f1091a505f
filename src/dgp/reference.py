"""A deliberately naive DGP loop with the structure of the original code, for tests and speed comparisons.

Like the released implementation it scores latent candidates one at a time, recomputes the target's
discriminator features and the spectral norms of the fixed discriminator at every step, computes PSNR/SSIM
on the CPU at every step, and reads every loss back to the host. It draws the same random numbers as
:class:`dgp.reconstruct.DGPReconstructor`, so both must give the same result; only the speed differs.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from dgp.degradations import Degradation
from dgp.metrics import psnr, ssim
from dgp.objective import feature_distance, per_sample_mean
from dgp.priors.registry import Prior
from dgp.reconstruct import draw_candidates
from dgp.schedule import Schedule


def reference_reconstruct(prior: Prior, schedule: Schedule, observation: Tensor, degradation: Degradation,
                          class_id: int | None, generator: torch.Generator,
                          reference: Tensor | None = None, fused_adam: bool = False) -> tuple[Tensor, Tensor, int]:
    """Reconstruct one image the slow way; returns ``(image (1, 3, R, R), z (1, dim_z), class_id)``.

    The optimiser is the original per-tensor Adam, or with ``fused_adam`` the fused kernel the lean path uses
    (the same arithmetic rounded differently): with it, the two paths should agree to float rounding.
    """
    G0, D = prior.G, prior.D
    size = (prior.resolution, prior.resolution)
    target = degradation.lift(observation, size)

    def distance(x: Tensor, count: int) -> Tensor:
        with torch.no_grad():
            real = D(target)[1]  # recomputed at every call, as in the original criterion
        return feature_distance(D(x)[1], real, count)

    n = schedule.n_candidates
    with torch.no_grad():
        if n <= 1:
            z0 = torch.zeros(1, G0.dim_z) if n == 0 else torch.randn(1, G0.dim_z, generator=generator)
            if class_id is None:
                scores = [distance(degradation.lift(degradation(G0(z0, G0.shared(torch.tensor([c])))), size), 3)
                          for c in range(prior.n_classes)]
                class_id = int(torch.cat(scores).argmin())
        else:
            z_all, y_all = draw_candidates(n, G0.dim_z, schedule.sample_std, prior.n_classes, class_id, generator)
            scores = []
            for i in range(n):
                x = G0(z_all[i:i + 1], G0.shared(y_all[i:i + 1]))
                scores.append(distance(degradation.lift(degradation(x), size),
                                       min(schedule.search_features, len(D(target)[1]))))
            best = int(torch.cat(scores).argmin())
            z0, class_id = z_all[best:best + 1], int(y_all[best])

    G = copy.deepcopy(G0).eval()
    G.reset_instance_norm()
    y = torch.tensor([class_id])
    z = z0.clone().requires_grad_(True)
    groups = G.param_groups(with_embedding=schedule.update_embed)
    groups = groups if schedule.tune_output_layer else groups[:-1]
    opt_G = torch.optim.Adam([{"params": g} for g in groups], lr=0.0, betas=(0.0, 0.999), eps=1e-8, fused=fused_adam)
    opt_z = torch.optim.Adam([z], lr=0.0, betas=(0.0, 0.999), eps=1e-8, fused=fused_adam)
    log = []
    for stage in schedule.stages:
        for group, lr in zip(opt_G.param_groups, stage.group_lrs(len(groups))):
            group["lr"] = lr
        opt_z.param_groups[0]["lr"] = stage.lr_z
        count = stage.feature_count(len(D(target)[1]))
        for _ in range(stage.iterations):
            opt_G.zero_grad()
            opt_z.zero_grad()
            x = G(z, G.shared(y), use_in=stage.use_in)
            degraded = degradation.lift(degradation(x), size)
            loss = (stage.w_D * distance(degraded, count) + stage.w_mse * per_sample_mean((degraded - target) ** 2)
                    + schedule.w_nll * per_sample_mean(z**2 / 2)).sum()
            loss.backward()
            opt_z.step()
            opt_G.step()
            entry = {"loss": loss.item()}
            if reference is not None:  # metrics on the CPU at every step, as the original did
                entry["psnr"] = float(psnr(x.detach().cpu(), reference.cpu())[0])
                entry["ssim"] = float(ssim(x.detach().cpu(), reference.cpu())[0])
            log.append(entry)
    with torch.no_grad():
        image = G(z, G.shared(y), use_in=schedule.stages[-1].use_in)
    return image, z.detach(), class_id
