"""Progressive reconstruction schedules: one :class:`Stage` record per stage, and the paper's presets.

The presets are the per-stage settings of the released DGP scripts for the 128-pixel ImageNet BigGAN.
Two counts in them depend on the architecture and are mapped onto the prior at hand:

* ``ft_num`` (parameter groups tuned, shallow to deep): group 0 is G's first linear layer (plus the class
  embedding when the schedule tunes it), then one group per resolution block. ``None`` means all of them.
  A count larger than the prior has is clipped, so on the 3-block CIFAR prior ``2,3,4,5,6`` opens
  2, 3, 4, 4, 4 groups. As in the released code, G's output layer is not tuned unless
  ``Schedule.tune_output_layer`` is set.
* ``ftr_num`` (last discriminator features in the loss) is counted on the 128 model, whose D returns 8
  features: ``8`` means all of them, ``7`` all but the shallowest, and so on. On a D with ``n`` features the
  count becomes ``k + n - 8`` (at least 1), i.e. the same number of shallow features is left out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

REFERENCE_FEATURES = 8  # features of the 128-pixel BigGAN discriminator that the presets count on


@dataclass(frozen=True)
class Stage:
    """Settings of one progressive stage.

    Attributes:
        iterations: optimisation steps.
        lr_G: generator learning rate of group 0 (group ``i`` gets ``lr_G * lr_ratio**i``).
        lr_z: latent learning rate.
        ft_num: parameter groups tuned (``None``: all); the others get learning rate 0.
        lr_ratio: per-group learning-rate ratio.
        ftr_num: last discriminator features in the loss, counted on the 128 model (see module doc).
        w_D: weight of the discriminator-feature L1 term.
        w_mse: weight of the pixel MSE term.
        use_in: run G with frozen instance norm instead of conditional batch norm.
    """

    iterations: int
    lr_G: float
    lr_z: float
    ft_num: int | None = None
    lr_ratio: float = 1.0
    ftr_num: int = 8
    w_D: float = 1.0
    w_mse: float = 0.0
    use_in: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not all(math.isfinite(v) and v >= 0 for v in (self.lr_G, self.lr_z)):
            raise ValueError(f"learning rates must be finite and >= 0, got lr_G={self.lr_G}, lr_z={self.lr_z}")
        if not all(math.isfinite(v) and v >= 0 for v in (self.w_D, self.w_mse)):
            raise ValueError(f"loss weights must be finite and >= 0, got w_D={self.w_D}, w_mse={self.w_mse}")
        if self.ft_num is not None and self.ft_num < 0:
            raise ValueError(f"ft_num must be >= 0 or None, got {self.ft_num}")
        if self.ftr_num < 1:
            raise ValueError(f"ftr_num must be >= 1, got {self.ftr_num}")
        if self.lr_ratio <= 0:
            raise ValueError(f"lr_ratio must be > 0, got {self.lr_ratio}")

    def group_lrs(self, num_groups: int) -> list[float]:
        """Learning rate of each of ``num_groups`` parameter groups in this stage."""
        open_groups = num_groups if self.ft_num is None else min(self.ft_num, num_groups)
        return [self.lr_G * self.lr_ratio**i if i < open_groups else 0.0 for i in range(num_groups)]

    def feature_count(self, num_features: int) -> int:
        """Number of last discriminator features for a D that returns ``num_features`` features."""
        return max(1, min(num_features, self.ftr_num + num_features - REFERENCE_FEATURES))


@dataclass(frozen=True)
class Schedule:
    """A whole reconstruction: latent search settings, loss settings and stages.

    Attributes:
        name: preset name (for records).
        stages: the progressive stages, run in order.
        w_nll: weight of the latent prior term ``mean(z**2 / 2)``.
        n_candidates: latent-search candidates (0: start from z = 0; 1: one draw from N(0, 1)).
        sample_std: standard deviation of the candidates.
        search_features: last discriminator features used to score candidates.
        update_embed: tune the class embedding with group 0.
        tune_output_layer: also tune G's output layer as the last group (the released code does not).
    """

    name: str
    stages: tuple[Stage, ...]
    w_nll: float = 0.02
    n_candidates: int = 500
    sample_std: float = 0.5
    search_features: int = 3
    update_embed: bool = False
    tune_output_layer: bool = False

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a schedule needs at least one stage")
        if self.n_candidates < 0:
            raise ValueError(f"n_candidates must be >= 0, got {self.n_candidates}")
        if self.sample_std <= 0:
            raise ValueError(f"sample_std must be > 0, got {self.sample_std}")
        if not (math.isfinite(self.w_nll) and self.w_nll >= 0):
            raise ValueError(f"w_nll must be finite and >= 0, got {self.w_nll}")
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def total_iterations(self) -> int:
        return sum(s.iterations for s in self.stages)

    def scaled(self, iterations: float = 1.0, candidates: float = 1.0, lr_G: float = 1.0) -> Schedule:
        """A copy with every stage's iterations and the candidate count multiplied (at least 1 each), and every
        stage's generator learning rate multiplied by ``lr_G``."""
        if iterations <= 0 or candidates < 0 or lr_G <= 0:
            raise ValueError(f"scales must be positive, got iterations={iterations}, candidates={candidates}, "
                             f"lr_G={lr_G}")
        stages = tuple(dataclasses.replace(s, iterations=max(1, math.ceil(s.iterations * iterations)),
                                           lr_G=s.lr_G * lr_G)
                       for s in self.stages)
        n = self.n_candidates if self.n_candidates <= 1 else max(2, math.ceil(self.n_candidates * candidates))
        return dataclasses.replace(self, stages=stages, n_candidates=n)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown schedule settings: {', '.join(sorted(unknown))}")
        stages = tuple(Stage(**s) for s in data.get("stages", ()))
        return cls(**{**data, "stages": stages})


def _stages(iterations, lr_G, lr_z, ft_num, lr_ratio, ftr_num, w_D, w_mse, use_in) -> tuple[Stage, ...]:
    n = len(iterations)

    def per_stage(value):
        return list(value) if isinstance(value, (list, tuple)) else [value] * n

    columns = [per_stage(v) for v in (iterations, lr_G, lr_z, ft_num, lr_ratio, ftr_num, w_D, w_mse, use_in)]
    if any(len(c) != n for c in columns):
        raise ValueError("every per-stage list needs one value per stage")
    return tuple(Stage(*row) for row in zip(*columns))


RESTORE_NLL = 0.02
MANIPULATE_NLL = 0.2

PRESETS: dict[str, Schedule] = {
    "colorization": Schedule(
        "colorization",
        _stages([200, 200, 300, 400, 300], [5e-5] * 4 + [2e-5], [2e-3, 1e-3, 5e-4, 5e-5, 2e-5],
                [2, 3, 4, 5, 6], [0.7, 0.7, 0.8, 0.9, 1.0], 7, 1.0, 0.0, False),
        w_nll=RESTORE_NLL, sample_std=0.5),
    "sr": Schedule(
        "sr",
        _stages([200] * 5, [5e-5, 5e-5, 2e-5, 1e-5, 1e-5], [2e-3, 1e-3, 2e-5, 1e-5, 1e-5],
                [2, 3, 4, 5, None], 1.0, 8, 1.0, 1.0, False),
        w_nll=RESTORE_NLL, sample_std=0.3),
    "sr-mse": Schedule(
        "sr-mse",
        _stages([200] * 5, [2e-4, 2e-4, 1e-4, 1e-4, 1e-5], [1e-3, 1e-3, 1e-4, 1e-4, 1e-5],
                [2, 3, 4, 5, None], 1.0, 8, [1.0, 1.0, 1.0, 0.5, 0.1], [10.0, 10.0, 10.0, 50.0, 100.0], True),
        w_nll=RESTORE_NLL, sample_std=0.3),
    "inpainting": Schedule(
        "inpainting",
        _stages([200] * 5, [5e-5, 5e-5, 2e-5, 2e-5, 1e-5], [2e-3, 1e-3, 2e-5, 2e-5, 1e-5],
                None, 1.0, 8, [1.0, 1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0, 10.0], False),
        w_nll=RESTORE_NLL, sample_std=0.3, update_embed=True),
    "manipulation": Schedule(
        "manipulation",
        _stages([125, 125, 100], [2e-7, 2e-5, 2e-6], [1e-1, 1e-2, 2e-4], None, 1.0, 8, 1.0, 0.0, False),
        w_nll=MANIPULATE_NLL, sample_std=0.5),
    "morphing": Schedule(
        "morphing",
        _stages([125, 125, 100], [2e-7, 2e-5, 2e-6], [1e-1, 1e-2, 2e-4], None, 1.0, 8, 1.0, 0.0, False),
        w_nll=MANIPULATE_NLL, sample_std=0.5, update_embed=True),
}
# Denoising and plain reconstruction have no released script; they use the SR preset's balanced
# feature + MSE loss, which is the closest fit (the observation is full-size and fully informative).
PRESETS["reconstruction"] = dataclasses.replace(PRESETS["sr"], name="reconstruction")
PRESETS["denoising"] = dataclasses.replace(PRESETS["sr"], name="denoising")


def get_preset(name: str) -> Schedule:
    """Look up a preset by name; ``ValueError`` lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
