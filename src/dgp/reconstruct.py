"""The progressive DGP reconstructor: latent search, then stage-by-stage tuning of z and G.

Data flow: observation + degradation -> target (lifted to full size) -> latent search -> stages -> result.
The prior is never modified: each reconstruction tunes its own copy of the generator.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from dgp.degradations import Degradation
from dgp.objective import Objective, feature_distance
from dgp.priors.biggan import Generator
from dgp.priors.registry import Prior
from dgp.schedule import Schedule


class ReconstructionError(RuntimeError):
    """A reconstruction that cannot go on (for example a loss that became NaN)."""


@dataclass
class StepEvent:
    """What callbacks receive after every optimisation step.

    Attributes:
        stage: stage index (0-based); ``-1`` during the latent search.
        num_stages: number of stages.
        step: steps done so far over all stages (candidates scored, during the search).
        total: total steps of the schedule (candidates, during the search).
        losses: loss terms of this step (empty during the search).
        image: generator output of this step ``(1, 3, R, R)`` in [-1, 1], detached (``None`` in the search).
    """

    stage: int
    num_stages: int
    step: int
    total: int
    losses: dict[str, float]
    image: Tensor | None


Callback = Callable[[StepEvent], None]


@dataclass
class Result:
    """Everything a reconstruction produced.

    Attributes:
        image: restored image ``(1, 3, R, R)`` in [-1, 1]: the tuned generator's output.
        observation: the observation as given (observation space, e.g. small for super-resolution).
        target: the observation lifted to full size ``(1, 3, R, R)``, what the loss compared against.
        z: tuned latent ``(1, dim_z)``.
        class_id: class used (given, or chosen by the latent search).
        class_embedding: class embedding after tuning ``(1, shared_dim)``.
        generator_state: the tuned generator's state dict (CPU tensors, original key names).
        use_in: whether the last stage ran G with instance norm (needed to render from the state).
        history: one dict of loss terms per step.
        timings: seconds spent in the search and in each stage.
    """

    image: Tensor
    observation: Tensor
    target: Tensor
    z: Tensor
    class_id: int
    class_embedding: Tensor
    generator_state: dict[str, Tensor]
    use_in: bool
    history: list[dict[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def generator(self, prior: Prior) -> Generator:
        """A copy of ``prior.G`` with this result's tuned weights, ready to render (eval mode)."""
        G = copy.deepcopy(prior.G)
        G.load_state_dict(self.generator_state)
        G.reset_instance_norm(ready=self.use_in)
        return G.eval()


def draw_candidates(n: int, dim_z: int, std: float, n_classes: int, class_id: int | None,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Latent-search candidates on the CPU: ``z`` ``(n, dim_z)`` ~ N(0, std^2) and classes ``(n,)``."""
    z = torch.randn(n, dim_z, generator=generator) * std
    if class_id is None:
        y = torch.randint(0, n_classes, (n,), generator=generator)
    else:
        y = torch.full((n,), class_id, dtype=torch.long)
    return z, y


@torch.no_grad()
def search_latent(prior: Prior, objective: Objective, degradation: Degradation, schedule: Schedule,
                  class_id: int | None, generator: torch.Generator, batch_size: int = 50,
                  callback: Callback | None = None) -> tuple[Tensor, int]:
    """Pick the starting latent (and class when unknown) by discriminator-feature distance.

    Returns ``z`` ``(1, dim_z)`` on the prior's device and the class id. With 0 candidates z = 0, with 1 a single
    draw from N(0, 1), as in the released code; when the class is unknown in those cases, every class is
    scored with that z and the best kept.
    """
    G = prior.G
    device = next(G.parameters()).device
    size = (prior.resolution, prior.resolution)
    count = min(schedule.search_features, objective.num_features)

    def score(z: Tensor, y: Tensor) -> Tensor:
        x = degradation.lift(degradation(G(z.to(device), G.shared(y.to(device)))), size)
        return feature_distance(objective.D(x)[1], objective.target_features, count)

    n = schedule.n_candidates
    if n <= 1:
        z = torch.zeros(1, G.dim_z) if n == 0 else torch.randn(1, G.dim_z, generator=generator)
        if class_id is not None:
            return z.to(device), class_id
        classes = torch.arange(prior.n_classes)
        losses = torch.cat([score(z.expand(len(chunk), -1), chunk) for chunk in classes.split(batch_size)])
        return z.to(device), int(losses.argmin())

    z_all, y_all = draw_candidates(n, G.dim_z, schedule.sample_std, prior.n_classes, class_id, generator)
    losses = []
    for start in range(0, n, batch_size):
        losses.append(score(z_all[start:start + batch_size], y_all[start:start + batch_size]).cpu())
        if callback is not None:
            done = min(start + batch_size, n)
            callback(StepEvent(-1, len(schedule.stages), done, n, {}, None))
    best = int(torch.cat(losses).argmin())
    return z_all[best:best + 1].to(device), int(y_all[best])


class DGPReconstructor:
    """Restores an observation by progressive relaxed GAN inversion (DGP).

    Args:
        prior: the GAN prior (G and D); left unchanged.
        schedule: latent search and stages.
        callbacks: called after every step with a :class:`StepEvent`.
    """

    def __init__(self, prior: Prior, schedule: Schedule, callbacks: Sequence[Callback] = ()) -> None:
        self.prior = prior
        self.schedule = schedule
        self.callbacks = list(callbacks)

    def _emit(self, event: StepEvent) -> None:
        for cb in self.callbacks:
            cb(event)

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> Result:
        """Reconstruct one image.

        Args:
            observation: degraded image ``(1, 3, h, w)`` in [-1, 1], in the degradation's observation space
                (``h, w`` = ``degradation.observation_size((R, R))``).
            degradation: the operator that produced it.
            class_id: the class, or ``None`` to let the latent search choose one.
            generator: CPU random generator for the latent search (default: seeded with 0).
        """
        prior, schedule = self.prior, self.schedule
        if observation.dim() != 4 or observation.shape[:2] != (1, 3):
            raise ValueError(f"observation must be (1, 3, h, w), got {tuple(observation.shape)}")
        size = (prior.resolution, prior.resolution)
        expected = tuple(degradation.observation_size(size))
        if tuple(observation.shape[-2:]) != expected:
            raise ValueError(f"observation is {tuple(observation.shape[-2:])} but {degradation.name} on a "
                             f"{size} prior observes {expected}")
        if class_id is not None and not 0 <= class_id < prior.n_classes:
            raise ValueError(f"class id {class_id} out of range 0..{prior.n_classes - 1}")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        device = next(prior.G.parameters()).device
        observation = observation.to(device)
        degradation = degradation.to(device)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        target = degradation.lift(observation, size)
        objective = Objective(prior.D, target)
        z0, class_id = search_latent(prior, objective, degradation, schedule, class_id, generator,
                                     callback=self._emit if self.callbacks else None)
        timings["search"] = time.perf_counter() - t0

        G = copy.deepcopy(prior.G).eval()
        G.reset_instance_norm()
        y = torch.tensor([class_id], device=device)
        z = z0.clone().requires_grad_(True)
        groups = G.param_groups(with_embedding=schedule.update_embed)
        if not schedule.tune_output_layer:
            groups = groups[:-1]
        opt_G = torch.optim.Adam([{"params": g} for g in groups], lr=0.0, betas=(0.0, 0.999), eps=1e-8)
        opt_z = torch.optim.Adam([z], lr=0.0, betas=(0.0, 0.999), eps=1e-8)

        history: list[dict[str, float]] = []
        step, total = 0, schedule.total_iterations
        for index, stage in enumerate(schedule.stages):
            t_stage = time.perf_counter()
            for group, lr in zip(opt_G.param_groups, stage.group_lrs(len(groups))):
                group["lr"] = lr
            opt_z.param_groups[0]["lr"] = stage.lr_z
            count = stage.feature_count(objective.num_features)
            for _ in range(stage.iterations):
                opt_G.zero_grad(set_to_none=True)
                opt_z.zero_grad(set_to_none=True)
                x = G(z, G.shared(y), use_in=stage.use_in)
                degraded = degradation.lift(degradation(x), size)
                terms = objective(degraded, z, count, stage.w_D, stage.w_mse, schedule.w_nll)
                terms.total.sum().backward()
                opt_z.step()
                opt_G.step()
                step += 1
                losses = terms.as_floats()
                if not math.isfinite(losses["loss"]):
                    raise ReconstructionError(
                        f"the loss became {losses['loss']} at stage {index + 1}, step {step}; "
                        "lower the learning rates or check the input")
                history.append(losses)
                self._emit(StepEvent(index, len(schedule.stages), step, total, losses, x.detach()))
            timings[f"stage{index + 1}"] = time.perf_counter() - t_stage

        last_in = schedule.stages[-1].use_in
        with torch.no_grad():
            image = G(z, G.shared(y), use_in=last_in)
        return Result(
            image=image.detach().cpu(),
            observation=observation.detach().cpu(),
            target=target.detach().cpu(),
            z=z.detach().cpu(),
            class_id=class_id,
            class_embedding=G.shared(y).detach().cpu(),
            generator_state={k: v.detach().cpu().clone() for k, v in G.state_dict().items()},
            use_in=last_in,
            history=history,
            timings=timings,
        )


def result_summary(result: Result) -> dict[str, Any]:
    """JSON-friendly summary of a result (no tensors)."""
    last = result.history[-1] if result.history else {}
    return {"class_id": result.class_id, "final_losses": last, "timings": result.timings,
            "metrics": result.metrics, "steps": len(result.history)}
