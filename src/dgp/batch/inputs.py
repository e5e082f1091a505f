"""What a batch run works on: a folder, a glob pattern or a list file -> a sorted list of named images.

Every image gets a *name*: its path relative to a root (the folder; the fixed part of a glob; the list file's
folder). The name keys the image in the manifest, picks its output file and seeds its restoration, so it
must not change between reruns; it is independent of where the input lives on disk otherwise.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dgp.imageio import IMAGE_SUFFIXES

LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclass(frozen=True)
class BatchInput:
    """One image of a batch.

    Attributes:
        name: POSIX path relative to the input root, e.g. ``"cat.jpg"`` or ``"2019/cat.jpg"``.
        path: where the file is.
    """

    name: str
    path: Path

    @property
    def output_name(self) -> str:
        """Relative name of the restored file: the name with a ``.png`` suffix (``"2019/cat.png"``)."""
        return str(PurePosixPath(self.name).with_suffix(".png"))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _glob_root(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _named(paths: list[Path], root: Path) -> list[BatchInput]:
    root = root.resolve()
    items = []
    for path in paths:
        resolved = path.resolve()
        try:
            rel = resolved.relative_to(root)
        except ValueError:
            rel = Path(os.path.relpath(resolved, root))
        items.append(BatchInput(rel.as_posix(), path))
    return items


def _from_list(list_file: Path) -> list[BatchInput]:
    base = list_file.parent
    paths = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        paths.append(path if path.is_absolute() else base / path)
    if not paths:
        return []
    root = base.resolve()
    if not all(p.resolve().is_relative_to(root) for p in paths):
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return _named(paths, root)


def list_inputs(spec: str | Path) -> list[BatchInput]:
    """The images of a batch, sorted by name.

    Args:
        spec: a folder (its image files, not recursive; hidden files skipped), a glob pattern (``"photos/*.jpg"``,
            ``"photos/**/*.png"``), or a list file (``.txt``/``.lst``/``.list``: one path a line, relative to the
            list file's folder; blank lines and ``#`` comments ignored).

    Returns:
        the images; files listed or matched are kept whatever their content (an unreadable one fails later, as
        one failed row, not the run).

    Raises:
        ValueError: nothing matches, a list file names a missing file, or two images would write the same
            output file (``a.png`` and ``a.jpg``).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        items = _named(sorted(p for p in path.iterdir() if p.is_file() and _is_image(p)), path)
        where = f"folder {path}"
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        items = _from_list(path)
        missing = [str(item.path) for item in items if not item.path.is_file()]
        if missing:
            raise ValueError(f"list file {path} names {len(missing)} missing file(s): {', '.join(missing[:3])}")
        where = f"list file {path}"
    elif path.is_file():
        items = _named([path], path.parent)
        where = str(path)
    elif glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        items = _named([p for p in matches if p.is_file() and _is_image(p)], _glob_root(os.path.expanduser(text)))
        where = f"pattern {text!r}"
    else:
        raise ValueError(f"input {text!r} is not a folder, a list file (.txt) or a glob pattern that matches")
    if not items:
        raise ValueError(f"no images in {where} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    items.sort(key=lambda item: item.name)
    _check_unique(items)
    return items


def _check_unique(items: list[BatchInput]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        key = item.output_name
        if key in seen and seen[key] != item.name:
            raise ValueError(f"{seen[key]} and {item.name} would both be restored to {key}; rename one")
        if key in seen:
            raise ValueError(f"{item.name} is listed twice")
        seen[key] = item.name


def find_reference(folder: Path, item: BatchInput) -> Path | None:
    """The clean reference of ``item`` in ``folder``: the same name, else the same stem with any image suffix."""
    same = folder / item.name
    if same.is_file():
        return same
    stem = folder / PurePosixPath(item.name).with_suffix("")
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (stem.with_name(stem.name + suffix), stem.with_name(stem.name + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None
