"""Image-folder datasets: one sub-folder per class, or a flat folder of images for an unlabeled set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgp.imageio import IMAGE_SUFFIXES, load_rgb, to_square


@dataclass
class ImageFolder:
    """A labelled (or unlabeled) list of image files.

    Attributes:
        root: the folder.
        files: image paths, sorted by class then name.
        labels: class index of each file (all 0 for an unlabeled folder).
        class_names: one name per class (``["images"]`` for an unlabeled folder).
    """

    root: Path
    files: list[Path]
    labels: list[int]
    class_names: list[str]

    @property
    def labelled(self) -> bool:
        return len(self.class_names) > 1 or self.class_names != ["images"]

    @classmethod
    def scan(cls, root: str | Path) -> ImageFolder:
        """Scan ``root``; raise ``ValueError`` when it holds no images."""
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"data folder not found: {root}")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files: list[Path] = []
        labels: list[int] = []
        names: list[str] = []
        for sub in subdirs:
            imgs = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if imgs:
                labels += [len(names)] * len(imgs)
                names.append(sub.name)
                files += imgs
        if not files:
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            labels = [0] * len(files)
            names = ["images"]
        if not files:
            raise ValueError(f"no images found in {root} (expected class sub-folders of .png/.jpg files)")
        return cls(root, files, labels, names)

    def subset(self, per_class: int, rng: np.random.Generator | None = None) -> ImageFolder:
        """At most ``per_class`` files of each class: the first ones, or a random draw when ``rng`` is given."""
        keep: list[int] = []
        labels = np.asarray(self.labels)
        for c in range(len(self.class_names)):
            idx = np.flatnonzero(labels == c)
            if rng is not None:
                idx = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
            keep += idx[:per_class].tolist()
        return ImageFolder(self.root, [self.files[i] for i in keep], [self.labels[i] for i in keep],
                           self.class_names)

    def load(self, resolution: int) -> tuple[Tensor, Tensor]:
        """All images as ``uint8`` ``(N, 3, R, R)`` (centre-cropped and resized) and labels ``(N,)``."""
        arrays = [np.asarray(to_square(load_rgb(f), resolution)) for f in self.files]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(self.labels, dtype=torch.long)
