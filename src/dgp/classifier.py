"""A small, fast CIFAR-style image classifier, and the shipped CIFAR-10 classifier.

The network follows the fast CIFAR-10 training recipes ("airbench", hlb-CIFAR10): a frozen 2x2 patch-whitening
convolution, three groups of ``conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU``, a global
max-pool and a linear head whose logits are scaled down. It is cheap enough to train on a CPU in well under an
hour and is used to score restorations (colorization accuracy), prior samples and feature statistics.

Images come in the project's convention, ``(B, 3, 32, 32)`` in [-1, 1]; the per-channel normalisation happens
inside the model. A classifier folder holds ``model.safetensors`` and ``card.json`` (architecture settings,
class names, data, training record and measured accuracy).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dgp.imageio import atomic_write

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FORMAT = "dgp-classifier/1"
SHIPPED = Path(__file__).resolve().parent / "assets" / "classifiers"
DEFAULT_CLASSIFIER = "cifar10"


class ClassifierError(ValueError):
    """A classifier folder that cannot be used, with a message fit for a user."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture settings (saved in the card; unknown keys are rejected).

    Attributes:
        n_classes: number of output classes.
        widths: channels of the three conv groups; the last one is the feature size ``F``.
        resolution: input side in pixels (the net is built for 32 but any side >= 16 runs).
        logit_scale: factor applied to the head's output.
        bn_momentum: BatchNorm running-statistics momentum (PyTorch convention).
        mean, std: per-channel statistics of the training images in [0, 1], used to normalise inputs.
    """

    n_classes: int = 10
    widths: tuple[int, int, int] = (64, 256, 256)
    resolution: int = 32
    logit_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.4
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {self.n_classes}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {list(self.widths)}")
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16, got {self.resolution}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values each (std > 0), got {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown classifier settings: {', '.join(unknown)}")
        return cls(**d)


class ConvGroup(nn.Module):
    """``conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU``: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batch_norm(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _batch_norm(c_out, bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


def _batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    # Scale fixed at 1 (only the shift is learned), as in the fast CIFAR recipes.
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class Classifier(nn.Module):
    """CIFAR-style classifier.

    ``forward(x)``: images ``(B, 3, R, R)`` in [-1, 1] -> logits ``(B, n_classes)``.
    ``features(x)``: the same images -> penultimate features ``(B, F)`` (``F = widths[-1]``), the globally
    max-pooled output of the last conv group (non-negative up to GELU's small negative lobe).
    """

    WHITEN_CHANNELS = 24  # 2 x (3 channels x 2 x 2 patch) eigenvectors, each with both signs

    def __init__(self, config: ClassifierConfig | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        w1, w2, w3 = config.widths
        with torch.random.fork_rng(devices=[]):  # default initialisation must not touch the global RNG
            self.whiten = nn.Conv2d(3, self.WHITEN_CHANNELS, 2, padding=0, bias=True)
            self.group1 = ConvGroup(self.WHITEN_CHANNELS, w1, config.bn_momentum)
            self.group2 = ConvGroup(w1, w2, config.bn_momentum)
            self.group3 = ConvGroup(w2, w3, config.bn_momentum)
            self.head = nn.Linear(w3, config.n_classes, bias=False)
        self.whiten.weight.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters(generator)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every weight from ``generator`` (a fresh one seeded 0 when omitted).

        Conv weights are Kaiming-uniform with their first ``C_in`` filters set to identity (partial Dirac
        initialisation, which lets signal pass through the deep narrow start of training); BN shifts are zero;
        the whitening conv is left as a random projection until :meth:`init_whitening`.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=gen)
                if m is not self.whiten:
                    nn.init.dirac_(m.weight[: m.weight.shape[1]])
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
        nn.init.kaiming_uniform_(self.head.weight, a=5 ** 0.5, generator=gen)

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the 2x2 stem convolution to ZCA-like patch whitening computed from ``images``.

        Args:
            images: ``(N, 3, H, W)`` training images in [-1, 1] (a few thousand are plenty).
            eps: added to the patch-covariance eigenvalues before the inverse square root.
        """
        x = self.normalize(images.to(self.whiten.weight.device, torch.float32))
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3 * 2 * 2)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / patches.shape[0]
        eigval, eigvec = torch.linalg.eigh(cov.double())
        eigval, eigvec = eigval.flip(0).float(), eigvec.T.flip(0).float()  # largest first, one per row
        filters = eigvec.reshape(12, 3, 2, 2) / torch.sqrt(eigval.clamp_min(0) + eps).view(12, 1, 1, 1)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def normalize(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> per-channel standardised images."""
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, R, R)`` in [-1, 1] -> penultimate features ``(B, F)``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        h = self.whiten(self.normalize(x))
        h = self.group3(self.group2(self.group1(h)))
        return torch.amax(h, dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, R, R)`` in [-1, 1] -> logits ``(B, n_classes)``."""
        return self.head(self.features(x)) * self.config.logit_scale


@torch.no_grad()
def predict_logits(model: Classifier, images: Tensor, flip: bool = True, batch_size: int = 500) -> Tensor:
    """Eval-mode logits ``(N, n_classes)`` for ``(N, 3, R, R)`` images in [-1, 1] (or ``uint8`` in [0, 255]).

    With ``flip``, logits are averaged over the image and its mirror (test-time augmentation).
    Runs in batches on the model's device; returns a CPU tensor.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
            x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            if flip:
                logits = 0.5 * (logits + model(x.flip(3)))
            out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.n_classes)


def accuracy_by_class(logits: Tensor, labels: Tensor, n_classes: int) -> tuple[float, list[float]]:
    """Top-1 accuracy overall and per class (``nan`` for a class with no example), as fractions in [0, 1]."""
    correct = (logits.argmax(1) == labels).float()
    per_class = []
    for c in range(n_classes):
        mask = labels == c
        per_class.append(correct[mask].mean().item() if mask.any() else float("nan"))
    return (correct.mean().item() if len(correct) else float("nan")), per_class


def save_classifier(folder: str | Path, model: Classifier, card: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``card.json`` (with the architecture added) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = {"format": FORMAT, "architecture": model.config.to_dict(), **card}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write(folder / "card.json", lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2) + "\n"))
    return folder


def shipped_classifiers() -> list[str]:
    """Names of the classifiers shipped in the package."""
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "card.json").is_file()) if SHIPPED.is_dir() else []


def resolve_classifier(name_or_path: str | Path | None = None) -> Path:
    """The folder of a shipped classifier name (``"cifar10"``, the default) or of a folder path."""
    if name_or_path is None:
        folder = SHIPPED / DEFAULT_CLASSIFIER
        if not folder.is_dir():
            raise ClassifierError(f"the shipped classifier is missing ({folder} does not exist); train one with "
                                  "`dgp train classifier` and pass its folder")
        return folder
    text = str(name_or_path)
    if isinstance(name_or_path, str) and Path(text).name == text and (SHIPPED / text).is_dir():
        return SHIPPED / text
    if Path(text).is_dir():
        return Path(text)
    shipped = ", ".join(shipped_classifiers()) or "none"
    raise ClassifierError(f"classifier not found: {text} is neither a folder nor a shipped classifier "
                          f"(shipped: {shipped})")


def load_classifier(name_or_path: str | Path | None = None, device: str | torch.device = "cpu"
                    ) -> tuple[Classifier, dict[str, Any]]:
    """Load a classifier folder (or the shipped one by name; default ``"cifar10"``).

    Returns:
        ``(model, card)``: the model in eval mode on ``device``, and the card as a dict.

    Raises:
        ClassifierError: missing folder or files, bad card, or weights that do not fit the architecture.
    """
    folder = resolve_classifier(name_or_path)
    card_path, weights = folder / "card.json", folder / "model.safetensors"
    if not card_path.is_file() or not weights.is_file():
        raise ClassifierError(f"{folder} is not a classifier folder (needs card.json and model.safetensors)")
    try:
        card = json.loads(card_path.read_text())
        config = ClassifierConfig.from_dict(card["architecture"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ClassifierError(f"{card_path} is not a valid classifier card: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ClassifierError(f"cannot read {weights}: {exc}") from None
    model = Classifier(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        mismatched = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise ClassifierError(f"{weights} does not fit the architecture in its card "
                              f"(missing {missing[:4]}, unexpected {unexpected[:4]}, mis-shaped {mismatched[:4]})")
    model.load_state_dict(state)
    return model.to(device).eval(), card


def card_class_names(card: dict[str, Any], n_classes: int) -> list[str]:
    """Class names from a card, or ``class 0..n-1`` when it has none."""
    names = card.get("class_names") or []
    return list(names) if len(names) == n_classes else [f"class {i}" for i in range(n_classes)]


__all__ = [
    "CIFAR10_CLASSES", "Classifier", "ClassifierConfig", "ClassifierError", "ConvGroup", "accuracy_by_class",
    "card_class_names", "load_classifier", "predict_logits", "resolve_classifier", "save_classifier",
    "shipped_classifiers",
]
