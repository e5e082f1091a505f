"""Named priors and the :class:`Prior` handle that the engine works with.

Known priors:

* ``cifar10``: our class-conditional 32x32 prior, shipped inside the package as a prior folder
  (``dgp/assets/priors/cifar10``: ``G_ema.safetensors``, ``D.safetensors``, ``card.json``);
* ``biggan-imagenet-128``, ``biggan-imagenet-256``, ``biggan-imagenet-ch64-256``: the BigGAN checkpoints
  released with DGP, which the user places in a folder given by ``weights=`` or the ``DGP_WEIGHTS``
  environment variable.

A path to a folder written by :func:`dgp.priors.checkpoint.save_prior` (a user-trained prior) works wherever a
name does.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from dgp.defaults import DEFAULT_PRIOR, WEIGHTS_ENV
from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_prior_folder,
    load_released,
    model_shapes,
    read_torch_file,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PACKAGED_PRIORS = ASSETS / "priors"
IMAGENET_CLASSES_FILE = ASSETS / "imagenet_classes.txt"

PRIOR_FOLDER_FILES = ("G_ema.safetensors", "D.safetensors", "card.json")


def _released_config(resolution: int, ch: int) -> BigGANConfig:
    """Architecture of a released DGP / BigGAN-PyTorch ImageNet checkpoint."""
    return BigGANConfig(resolution=resolution, G_ch=ch, D_ch=ch, dim_z=120, shared_dim=128, hier=True,
                        n_classes=1000, G_attn="64", D_attn="64", SN_eps=1e-6)


class PriorError(ValueError):
    """A prior that cannot be found or loaded, with a one-line message fit for a user."""


@dataclass(frozen=True)
class PriorSpec:
    """A known prior: where its files come from and what they hold.

    Attributes:
        name: registry name (``"biggan-imagenet-128"``).
        description: one line for listings.
        resolution: image side in pixels.
        n_classes: number of classes.
        files: file names the prior needs, generator first.
        kind: ``"packaged"`` (a prior folder inside the package) or ``"released"`` (BigGAN-PyTorch ``.pth``
            files in the user's weights folder).
        config: the architecture of a released prior (packaged priors carry theirs in ``card.json``).
        folder: the folder of a packaged prior.
    """

    name: str
    description: str
    resolution: int
    n_classes: int
    files: tuple[str, ...]
    kind: Literal["packaged", "released"]
    config: BigGANConfig | None = None
    folder: Path | None = None

    def weights_folder(self, weights: str | Path | None = None) -> Path | None:
        """The folder this prior's files are looked up in (``None``: a released prior with no folder given)."""
        if self.kind == "packaged":
            return self.folder
        return weights_folder(weights)

    def missing_files(self, weights: str | Path | None = None) -> list[str]:
        """Names of the files not present in :meth:`weights_folder` (all of them when there is no folder)."""
        folder = self.weights_folder(weights)
        if folder is None:
            return list(self.files)
        return [f for f in self.files if not (folder / f).is_file()]


_PRIORS: tuple[PriorSpec, ...] = (
    PriorSpec("cifar10", "class-conditional BigGAN trained on CIFAR-10 (shipped with dgp)", 32, 10,
              PRIOR_FOLDER_FILES, "packaged", folder=PACKAGED_PRIORS / "cifar10"),
    PriorSpec("biggan-imagenet-128", "released DGP BigGAN, ImageNet 128x128", 128, 1000,
              ("G_ema_128.pth", "D_128.pth"), "released", config=_released_config(128, 96)),
    PriorSpec("biggan-imagenet-256", "released DGP BigGAN, ImageNet 256x256", 256, 1000,
              ("G_ema_256.pth", "D_256.pth"), "released", config=_released_config(256, 96)),
    PriorSpec("biggan-imagenet-ch64-256", "released DGP BigGAN, ImageNet 256x256, width 64", 256, 1000,
              ("G_ema_ch64_256.pth", "D_ch64_256.pth"), "released", config=_released_config(256, 64)),
)


def list_priors() -> list[PriorSpec]:
    """Every known prior, the default first."""
    return list(_PRIORS)


def get_spec(name: str) -> PriorSpec:
    """The :class:`PriorSpec` called ``name``; :class:`PriorError` listing the known names otherwise."""
    for spec in _PRIORS:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in _PRIORS)
    close = difflib.get_close_matches(name, [s.name for s in _PRIORS], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise PriorError(f"unknown prior {name!r}{hint}; known priors: {known}, or the path of a prior folder "
                     f"({', '.join(PRIOR_FOLDER_FILES)})")


def weights_folder(weights: str | Path | None = None) -> Path | None:
    """The released-weights folder: ``weights`` if given, else ``$DGP_WEIGHTS``, else ``None``."""
    if weights is not None and str(weights) != "":
        return Path(weights).expanduser()
    env = os.environ.get(WEIGHTS_ENV, "")
    return Path(env).expanduser() if env else None


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class-id order (from the packaged ``imagenet_classes.txt``)."""
    lines = IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if len(names) != 1000:
        raise PriorError(f"{IMAGENET_CLASSES_FILE} holds {len(names)} class names, expected 1000")
    return names


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


@dataclass
class Prior:
    """A loaded prior: generator and discriminator (eval mode) with their class names and model card.

    Attributes:
        name: registry name or folder path it was loaded from.
        G: generator, ``G(z, G.shared(ids))`` -> ``(B, 3, R, R)`` in [-1, 1].
        D: discriminator, ``D(x, ids)`` -> ``(logit (B, 1), features)``.
        class_names: one name per class, in class-id order.
        card: model card (architecture, source of the weights, training information).
    """

    name: str
    G: Generator
    D: Discriminator
    class_names: list[str]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        """Image side in pixels."""
        return self.G.config.resolution

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return self.G.config.n_classes

    @property
    def device(self) -> torch.device:
        """Device the generator's weights are on."""
        return self.G.shared.weight.device

    def class_id(self, spec: str | int) -> int:
        """Class id from an id (``207`` or ``"207"``) or a name.

        Names match case-insensitively (underscores count as spaces); a name holding comma-separated synonyms
        matches any of them. An exact, case-sensitive match wins over case-insensitive ones.

        Raises:
            ValueError: a one-line message for an unknown, ambiguous or out-of-range class, naming close matches.
        """
        if isinstance(spec, bool):
            raise ValueError(f"class must be a name or an id, got {spec!r}")
        if isinstance(spec, numbers.Integral) or (isinstance(spec, str) and spec.strip().lstrip("+-").isdigit()):
            index = int(spec)
            if not 0 <= index < self.n_classes:
                raise ValueError(f"class id {index} is out of range for prior {self.name} "
                                 f"(0..{self.n_classes - 1})")
            return index
        if not isinstance(spec, str):
            raise ValueError(f"class must be a name or an id, got {type(spec).__name__}")
        text = spec.strip()
        exact = [i for i, name in enumerate(self.class_names) if name == text]
        if len(exact) == 1:
            return exact[0]
        wanted = _normalise(text)
        hits = [i for i, name in enumerate(self.class_names)
                if wanted == _normalise(name) or wanted in (_normalise(s) for s in name.split(","))]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = ", ".join(f"{self.class_names[i]!r} ({i})" for i in hits)
            raise ValueError(f"class {spec!r} is ambiguous in prior {self.name}: {listed}; give the id")
        raise ValueError(f"unknown class {spec!r} for prior {self.name}{self._suggest(wanted)}")

    def _suggest(self, wanted: str, limit: int = 5) -> str:
        normalised = [_normalise(n) for n in self.class_names]
        picks = [i for i, n in enumerate(normalised) if wanted and wanted in n][:limit]
        for close in difflib.get_close_matches(wanted, normalised, n=limit, cutoff=0.6):
            i = normalised.index(close)
            if i not in picks and len(picks) < limit:
                picks.append(i)
        if picks:
            return "; close matches: " + ", ".join(f"{self.class_names[i]!r} ({i})" for i in picks)
        return f"; give a class name or an id 0..{self.n_classes - 1}"

    def to(self, device: str | torch.device) -> Prior:
        """Move G and D to ``device`` in place; returns ``self``."""
        self.G.to(device)
        self.D.to(device)
        return self


def _released_error(spec: PriorSpec, folder: Path | None, missing: Sequence[str]) -> PriorError:
    files = " and ".join(spec.files)
    if folder is None:
        return PriorError(f"prior {spec.name} needs the released DGP weights {files}: place them in a folder "
                          f"and pass it with --weights DIR or set {WEIGHTS_ENV}=DIR")
    if not folder.is_dir():
        return PriorError(f"weights folder {folder} does not exist: create it, place {files} there and pass "
                          f"it with --weights {folder} or set {WEIGHTS_ENV}={folder}")
    return PriorError(f"prior {spec.name}: {', '.join(missing)} not found in {folder}; place {files} in "
                      f"{folder} (--weights {folder} or {WEIGHTS_ENV}={folder})")


def _from_folder(folder: Path, name: str) -> Prior:
    """Load one of our prior folders; class names from its card (ids as names when it has none)."""
    missing = [f for f in PRIOR_FOLDER_FILES if not (folder / f).is_file()]
    if missing:
        raise PriorError(f"prior {name}: {', '.join(missing)} not found in {folder} "
                         f"(a prior folder holds {', '.join(PRIOR_FOLDER_FILES)})")
    G, D, card = load_prior_folder(folder)
    assert D is not None
    names = card.get("class_names")
    if names is None:
        names = [str(i) for i in range(G.config.n_classes)]
    if not isinstance(names, list) or len(names) != G.config.n_classes or not all(isinstance(n, str) for n in names):
        raise PriorError(f"{folder / 'card.json'}: class_names must be a list of {G.config.n_classes} strings")
    return Prior(name=name, G=G, D=D, class_names=list(names), card=card)


def load_prior(name: str | None = None, weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> Prior:
    """Load a prior by registry name or prior-folder path.

    Args:
        name: a name from :func:`list_priors` (default :data:`DEFAULT_PRIOR`) or the path of a prior folder.
        weights: folder holding the released ``.pth`` files (default: ``$DGP_WEIGHTS``).
        device: where to put G and D.

    Raises:
        PriorError: unknown name, or files absent (the message says which files to place where).
        CheckpointError: files present but unreadable or not fitting the architecture.
    """
    name = DEFAULT_PRIOR if name is None else str(name)
    if name not in {s.name for s in _PRIORS}:
        path = Path(name).expanduser()
        if path.is_dir():
            return _from_folder(path, name).to(device)
        if path.exists():
            raise PriorError(f"{name} is a file; a prior is a registry name or a folder "
                             f"({', '.join(PRIOR_FOLDER_FILES)})")
        if os.sep in name or "/" in name or name.startswith("."):
            raise PriorError(f"prior folder not found: {name}")
        get_spec(name)  # raises with the known names
    spec = get_spec(name)
    if spec.kind == "packaged":
        assert spec.folder is not None
        if spec.missing_files():
            raise PriorError(f"the packaged prior {spec.name} is not installed ({spec.folder} lacks "
                             f"{', '.join(spec.missing_files())}); use a released prior or a prior folder")
        return _from_folder(spec.folder, spec.name).to(device)
    folder = weights_folder(weights)
    missing = spec.missing_files(weights)
    if folder is None or missing:
        raise _released_error(spec, folder, missing)
    assert spec.config is not None
    g_path, d_path = (folder / f for f in spec.files)
    G, D = load_released(spec.config, g_path, d_path)
    assert D is not None
    card = {"format": "biggan-pytorch", "architecture": spec.config.to_dict(),
            "weights": {"G": str(g_path), "D": str(d_path)},
            "class_names_source": "torchvision 0.29.1 _IMAGENET_CATEGORIES"}
    return Prior(name=spec.name, G=G, D=D, class_names=imagenet_class_names(), card=card).to(device)


# --- checking a folder of released files --------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    """Result of checking one released file.

    ``status`` is ``"ok"``; ``"absent"`` (neither file of the prior is in the folder: not a problem);
    ``"missing"`` (the other file of the prior is there, this one is not); or ``"bad"`` (unreadable, or keys or
    shapes that do not fit; ``message`` says which).
    """

    prior: str
    file: str
    path: Path
    status: Literal["ok", "absent", "missing", "bad"]
    message: str = ""

    @property
    def problem(self) -> bool:
        """Whether this result needs the user's attention."""
        return self.status in ("missing", "bad")


def expected_shapes(config: BigGANConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """State-dict key -> shape of G and D for ``config``, built on the meta device (no memory for weights)."""
    with torch.device("meta"):
        G = Generator(config)
        D = Discriminator(config)
    return model_shapes(G), model_shapes(D)


def check_weights_folder(folder: str | Path, specs: Sequence[PriorSpec] | None = None) -> list[FileCheck]:
    """Check the released files in ``folder`` against the architectures of the released priors.

    Each file is memory-mapped on the CPU (``weights_only=True``) and only its key names and shapes are
    compared; no model is built with real weights and no GPU is used.

    Args:
        folder: the weights folder.
        specs: the priors to check (default: every released prior).

    Returns:
        One :class:`FileCheck` per file of each prior, in registry order.

    Raises:
        PriorError: ``folder`` is not a directory.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PriorError(f"weights folder not found: {folder}")
    specs = [s for s in _PRIORS if s.kind == "released"] if specs is None else list(specs)
    results: list[FileCheck] = []
    for spec in specs:
        if spec.config is None:
            raise PriorError(f"prior {spec.name} has no fixed architecture to check against")
        present = [f for f in spec.files if (folder / f).is_file()]
        g_shapes, d_shapes = expected_shapes(spec.config) if present else ({}, {})
        for i, file in enumerate(spec.files):
            path = folder / file
            if not present:
                results.append(FileCheck(spec.name, file, path, "absent", "not in the folder"))
                continue
            if file not in present:
                results.append(FileCheck(spec.name, file, path, "missing",
                                         f"not found; it is needed together with {', '.join(present)}"))
                continue
            try:
                state = read_torch_file(path, mmap=True)
                check_state_dict(g_shapes if i == 0 else d_shapes, state, file)
            except CheckpointError as exc:
                results.append(FileCheck(spec.name, file, path, "bad", str(exc)))
                continue
            results.append(FileCheck(spec.name, file, path, "ok", f"{len(state)} tensors fit the architecture"))
    return results


__all__ = [
    "DEFAULT_PRIOR",
    "FileCheck",
    "Prior",
    "PriorError",
    "PriorSpec",
    "check_weights_folder",
    "expected_shapes",
    "get_spec",
    "imagenet_class_names",
    "list_priors",
    "load_prior",
    "weights_folder",
]
