"""The benchmark's default data: the shared CIFAR-10 test split, unpacked once into a cache folder.

The project's shared folder (``../shared`` next to the repository, or ``$DGP_SHARED``) holds
``data/cifar10-jpg.tar.gz`` with ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``. It is unpacked into
``$DGP_CACHE/cifar10`` (default ``~/.cache/dgp/cifar10``) the first time it is needed.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

ARCHIVE = Path("data") / "cifar10-jpg.tar.gz"
SHARED_ENV = "DGP_SHARED"
CACHE_ENV = "DGP_CACHE"
_DONE = ".unpacked"


def shared_candidates() -> list[Path]:
    """Where the shared folder may be: ``$DGP_SHARED``, else ``../shared`` beside the source checkout and beside
    the working directory."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return [Path(env).expanduser()]
    repo = Path(__file__).resolve().parents[3]  # src/dgp/bench/datasets.py -> repository root
    seen: list[Path] = []
    for path in (repo.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"):
        if path not in seen:
            seen.append(path)
    return seen


def cache_root() -> Path:
    """``$DGP_CACHE``, else ``~/.cache/dgp``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dgp"


def find_archive() -> Path:
    """The CIFAR-10 archive in the shared folder; ``FileNotFoundError`` naming the places looked at."""
    places = [p / ARCHIVE for p in shared_candidates()]
    for path in places:
        if path.is_file():
            return path
    raise FileNotFoundError(f"the shared CIFAR-10 archive was not found (looked for {', '.join(map(str, places))}); "
                            f"set {SHARED_ENV} to the shared folder or pass --data DIR (a folder of class "
                            "sub-folders)")


def _extract(archive: Path, destination: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            root = destination.resolve()
            for member in tar.getmembers():
                target = (destination / member.name).resolve()
                if not (member.isfile() or member.isdir()) or root not in (target, *target.parents):
                    raise ValueError(f"{archive}: refusing to extract {member.name!r}")
            tar.extractall(destination)


def cifar10_split(split: str = "test", archive: Path | None = None, cache: Path | None = None) -> Path:
    """The folder of one split (``test`` or ``train``) of the shared CIFAR-10 archive, unpacked on first use.

    Unpacking goes to a temporary folder beside the cache, renamed into place when complete, so an interrupted
    run never leaves a half-unpacked cache behind.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    folder = (cache or cache_root()) / "cifar10"
    if not (folder / _DONE).is_file():
        archive = archive or find_archive()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".cifar10.", dir=folder.parent))
        try:
            _extract(archive, tmp)
            (tmp / _DONE).write_text(f"{archive}\n")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    path = folder / split
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the archive has no {split}/ folder")
    return path


__all__ = ["cache_root", "cifar10_split", "find_archive", "shared_candidates"]
