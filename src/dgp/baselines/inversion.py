"""GAN-based baselines and DGP's ablations, all run by :class:`dgp.reconstruct.DGPReconstructor`.

Each is DGP with one part changed, so that a comparison isolates that part:

* :class:`GANInversion` (``gan-inversion``): the generator stays fixed and only the latent ``z`` is optimised
  (every stage's ``lr_G`` = 0 and ``ft_num`` = 0, and G's weights frozen, which also skips their gradients);
  this is plain GAN inversion, DGP without "relaxing" G;
* :func:`mse_only` (``dgp-mse-only``): the distance is the pixel MSE alone (``w_D`` = 0 in every stage; a stage
  with no MSE weight gets ``w_mse`` = 1). The latent search still scores candidates by discriminator features;
* :func:`all_blocks` (``dgp-all-blocks``): every block of G is tuned from the first stage on (``ft_num`` =
  ``None`` everywhere) instead of progressively from shallow to deep;
* :func:`no_search` (``dgp-no-search``): no latent search, the optimisation starts from ``z = 0``
  (``n_candidates`` = 0);
* :func:`random_generator_prior` (``random-g``): the prior's architecture with freshly initialised generator
  weights and the trained discriminator (which the distance needs), run with the unchanged DGP schedule: how
  much comes from the network structure alone (DGP's comparison with a randomly initialised G).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dgp.priors.biggan import Generator
from dgp.priors.registry import Prior
from dgp.reconstruct import Callback, DGPReconstructor, Result
from dgp.schedule import Schedule

if TYPE_CHECKING:
    from dgp.degradations import Degradation


def latent_only(schedule: Schedule) -> Schedule:
    """``schedule`` with the generator held fixed: ``lr_G`` = 0 and ``ft_num`` = 0 in every stage."""
    stages = tuple(dataclasses.replace(s, lr_G=0.0, ft_num=0) for s in schedule.stages)
    return dataclasses.replace(schedule, name=f"{schedule.name}+latent-only", stages=stages, update_embed=False)


def mse_only(schedule: Schedule, w_mse: float = 1.0) -> Schedule:
    """``schedule`` with the pixel MSE as the only distance: ``w_D`` = 0, and ``w_mse`` where a stage had none."""
    if not w_mse > 0:
        raise ValueError(f"w_mse must be > 0, got {w_mse}")
    stages = tuple(dataclasses.replace(s, w_D=0.0, w_mse=s.w_mse if s.w_mse > 0 else w_mse)
                   for s in schedule.stages)
    return dataclasses.replace(schedule, name=f"{schedule.name}+mse-only", stages=stages)


def all_blocks(schedule: Schedule) -> Schedule:
    """``schedule`` tuning every parameter group in every stage (``ft_num`` = ``None``): not progressive."""
    stages = tuple(dataclasses.replace(s, ft_num=None) for s in schedule.stages)
    return dataclasses.replace(schedule, name=f"{schedule.name}+all-blocks", stages=stages)


def no_search(schedule: Schedule) -> Schedule:
    """``schedule`` without the latent search: start from ``z = 0`` (``n_candidates`` = 0)."""
    return dataclasses.replace(schedule, name=f"{schedule.name}+no-search", n_candidates=0)


#: DGP ablations: method name -> schedule transform.
ABLATIONS: dict[str, Callable[[Schedule], Schedule]] = {
    "dgp-mse-only": mse_only,
    "dgp-all-blocks": all_blocks,
    "dgp-no-search": no_search,
}


def frozen_prior(prior: Prior) -> Prior:
    """A prior sharing ``prior``'s discriminator, with a copy of its generator whose weights need no gradient."""
    G = copy.deepcopy(prior.G).requires_grad_(False).eval()
    return Prior(name=f"{prior.name} (G frozen)", G=G, D=prior.D, class_names=list(prior.class_names),
                 card=prior.card)


def random_generator_prior(prior: Prior, seed: int = 0) -> Prior:
    """``prior``'s architecture with a freshly initialised generator (BigGAN's orthogonal init, seeded) and
    ``prior``'s trained discriminator. The generator is put on ``prior``'s device, in eval mode."""
    with torch.random.fork_rng(devices=[]):  # module initialisation draws from the global generator
        torch.manual_seed(seed)
        G = Generator(prior.G.config)
    G = G.to(prior.device).eval()
    return Prior(name=f"{prior.name} (random G, seed {seed})", G=G, D=prior.D,
                 class_names=list(prior.class_names), card=prior.card)


class GANInversion:
    """Latent-only GAN inversion: DGP's latent search and stages with the generator fixed.

    Args:
        prior: the GAN prior (left unchanged).
        schedule: a DGP schedule; its generator learning rates are ignored (see :func:`latent_only`).
        callbacks: per-step callbacks, as for :class:`dgp.reconstruct.DGPReconstructor`.
    """

    def __init__(self, prior: Prior, schedule: Schedule, callbacks: Sequence[Callback] = ()) -> None:
        self.schedule = latent_only(schedule)
        self._engine = DGPReconstructor(frozen_prior(prior), self.schedule, callbacks)

    @property
    def callbacks(self) -> list[Callback]:
        return self._engine.callbacks

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> Result:
        """Invert ``observation`` ``(1, 3, h, w)``; returns DGP's :class:`dgp.reconstruct.Result`."""
        return self._engine(observation, degradation, class_id, generator)

    def batch(self, observations: Sequence[Tensor], degradations: Degradation | Sequence[Degradation],
              class_ids: Sequence[int | None] | None = None,
              generators: Sequence[torch.Generator | None] | None = None) -> list[Result]:
        """Invert several images at once (:meth:`dgp.reconstruct.DGPReconstructor.batch`)."""
        return self._engine.batch(observations, degradations, class_ids, generators)


def ablation(name: str, prior: Prior, schedule: Schedule, callbacks: Sequence[Callback] = ()) -> DGPReconstructor:
    """The DGP ablation ``name`` (a key of :data:`ABLATIONS`) as a reconstructor."""
    try:
        transform = ABLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}") from None
    return DGPReconstructor(prior, transform(schedule), callbacks)


__all__ = ["ABLATIONS", "GANInversion", "ablation", "all_blocks", "frozen_prior", "latent_only", "mse_only",
           "no_search", "random_generator_prior"]
