"""DGP's distance in the degraded space: discriminator-feature L1, pixel MSE and a latent prior term.

Every term is computed per sample (shape ``(B,)``), so that a batch of independent reconstructions gets, for
each image, exactly the gradient a single-image run would get when the batch loss is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgp.priors.biggan import Discriminator
from dgp.tracing import Recorded


def per_sample_mean(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def feature_distance(fake: list[Tensor], real: list[Tensor], count: int) -> Tensor:
    """Sum over the last ``count`` features of the mean absolute difference, per sample ``(B,)``.

    ``real`` may have batch size 1 (broadcast against ``fake``).
    """
    total = torch.zeros(fake[-1].shape[0], device=fake[-1].device, dtype=fake[-1].dtype)
    for f, r in zip(fake[-count:], real[-count:]):
        total = total + per_sample_mean((f - r).abs())
    return total


@dataclass
class LossTerms:
    """Per-sample terms ``(B,)`` of one evaluation and their weighted sum ``total``."""

    total: Tensor
    features: Tensor
    mse: Tensor
    nll: Tensor

    def as_floats(self, index: int = 0) -> dict[str, float]:
        """The terms of sample ``index`` as floats; ``mse`` on the [0, 1] image scale, as DGP logs it."""
        return {"loss": float(self.total[index].detach()), "features": float(self.features[index].detach()),
                "mse": float(self.mse[index].detach()) / 4.0, "nll": float(self.nll[index].detach())}


class Objective:
    """DGP's reconstruction loss against a fixed target.

    Args:
        D: the prior's discriminator, in eval mode; it runs without class projection.
        target: the degraded observation lifted to full size, ``(1 or B, 3, R, R)`` in [-1, 1].

    The target's features are computed once, here, and never change. D's weights are held constant: gradients
    flow to the images only, never into ``D`` (the prior's discriminator gets no ``.grad`` and no backward work).
    Inside :func:`dgp.priors.layers.constant_network` (as reconstructions run it) ``D`` is called directly,
    replayed from a recording of its first pass for inputs of that shape (:mod:`dgp.tracing`, shared with the
    objective's subsets), with D's normalised weights at that time as constants; otherwise through
    ``functional_call`` with detached weights, which costs more operators per call.
    """

    def __init__(self, D: Discriminator, target: Tensor) -> None:
        self.D = D
        self.target = target
        self._constant_weights = {name: p.detach() for name, p in D.named_parameters()}
        with torch.no_grad():
            self.target_features = [f.detach() for f in D(target)[1]]
        self._constant_features = Recorded(lambda x: tuple(D(x)[1]), "discriminator features")

    def subset(self, start: int, stop: int | None = None) -> Objective:
        """The objective of images ``start`` to ``stop - 1`` (default: ``start`` alone) of a batched target
        (features sliced, not recomputed; D's recordings shared, so that subsets of one size record once)."""
        stop = start + 1 if stop is None else stop
        part = Objective.__new__(Objective)
        part.D = self.D
        part._constant_weights = self._constant_weights
        part._constant_features = Recorded(self._constant_features.fn, "discriminator features",
                                           self._constant_features.recordings)
        part.target = self.target[start:stop]
        part.target_features = [f[start:stop] for f in self.target_features]
        return part

    @property
    def num_features(self) -> int:
        return len(self.target_features)

    def features(self, x: Tensor, count: int) -> Tensor:
        """Feature distance ``(B,)`` of degraded images ``x`` ``(B, 3, R, R)`` to the target."""
        if any(p.requires_grad for p in self.D.parameters()):
            features = torch.func.functional_call(self.D, self._constant_weights, (x,))[1]
        else:
            features = list(self._constant_features(x))
        return feature_distance(features, self.target_features, count)

    def __call__(self, x: Tensor, z: Tensor, feature_count: int, w_D: float, w_mse: float,
                 w_nll: float) -> LossTerms:
        """Loss of degraded generator output ``x`` ``(B, 3, R, R)`` with latents ``z`` ``(B, dim_z)``.

        A term with weight 0 is computed for the record only, outside the autograd graph (no backward work);
        when every weight is 0 all terms stay in the graph, so that the total can still be differentiated.
        """
        weights = (w_D, w_mse, w_nll)
        in_graph = [torch.is_grad_enabled() and (w != 0 or not any(weights)) for w in weights]
        with torch.set_grad_enabled(in_graph[0]):
            feats = self.features(x, feature_count)
        with torch.set_grad_enabled(in_graph[1]):
            mse = per_sample_mean((x - self.target) ** 2)
        with torch.set_grad_enabled(in_graph[2]):
            nll = per_sample_mean(z**2 / 2)
        return LossTerms(w_D * feats + w_mse * mse + w_nll * nll, feats, mse, nll)
