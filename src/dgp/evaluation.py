"""Measuring a prior with a classifier: conditional-sample accuracy and a Fréchet feature distance.

The Fréchet distance here is computed between the *classifier's* penultimate features of generated and real
images. It is the same formula as FID but not FID (which uses Inception-v3 features on ImageNet): its values
are comparable only with other figures computed with the same classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dgp.classifier import Classifier, accuracy_by_class, predict_logits
from dgp.priors.registry import Prior


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, F)`` and ``b`` ``(M, F)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``, in float64; the trace of the matrix square root
    is taken from the eigenvalues of ``S_a^{1/2} S_b S_a^{1/2}`` (symmetric, so this is stable).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, F) and (M, F), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 samples")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    inner = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * inner)


@torch.no_grad()
def class_samples(prior: Prior, per_class: int, seed: int = 0, batch_size: int = 100) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of every class: images ``(C * per_class, 3, R, R)`` in [-1, 1] and labels."""
    generator = torch.Generator().manual_seed(seed)
    G, device = prior.G, prior.device
    labels = torch.arange(prior.n_classes).repeat_interleave(per_class)
    images = []
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size]
        z = torch.randn(len(y), G.dim_z, generator=generator)
        images.append(G(z.to(device), G.shared(y.to(device))).cpu())
    return torch.cat(images), labels


@torch.no_grad()
def classifier_features(model: Classifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate features ``(N, F)`` of images ``(N, 3, R, R)`` in [-1, 1] or ``uint8``."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        out.append(model.features(x).float().cpu())
    return torch.cat(out)


@dataclass
class PriorEvaluation:
    """Figures of a prior measured with a classifier (accuracies as fractions in [0, 1])."""

    sample_accuracy: float
    sample_accuracy_per_class: list[float]
    frechet_classifier_distance: float
    real_accuracy: float
    samples_per_class: int
    real_images: int
    seed: int
    class_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "conditional_sample_accuracy": round(self.sample_accuracy, 4),
            "conditional_sample_accuracy_per_class": {n: round(a, 4) for n, a in
                                                      zip(self.class_names, self.sample_accuracy_per_class)},
            "frechet_classifier_distance": round(self.frechet_classifier_distance, 3),
            "classifier_accuracy_on_real": round(self.real_accuracy, 4),
            "samples_per_class": self.samples_per_class,
            "real_images": self.real_images,
            "seed": self.seed,
        }


def evaluate_prior(prior: Prior, classifier: Classifier, real_images: Tensor, real_labels: Tensor,
                   per_class: int = 500, seed: int = 0) -> PriorEvaluation:
    """Conditional-sample accuracy (per class and mean) and the Fréchet distance of classifier features.

    Args:
        real_images: test images ``(N, 3, R, R)`` (``uint8`` or [-1, 1]) whose labels follow the prior's classes.
    """
    images, labels = class_samples(prior, per_class, seed)
    logits = predict_logits(classifier, images, flip=False)
    acc, per = accuracy_by_class(logits, labels, prior.n_classes)
    real_logits = predict_logits(classifier, real_images, flip=False)
    real_acc, _ = accuracy_by_class(real_logits, real_labels, prior.n_classes)
    fd = frechet_distance(classifier_features(classifier, images), classifier_features(classifier, real_images))
    return PriorEvaluation(acc, per, fd, real_acc, per_class, int(real_images.shape[0]), seed,
                           list(prior.class_names))
