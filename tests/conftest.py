"""Shared fixtures: the ../shared folder, a tiny BigGAN config and a tiny random prior."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.registry import Prior

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Run torch single-threaded (override with ``DGP_TEST_THREADS``): the test models are tiny, and on a busy
    machine several threads per test process spin against each other and run many times slower."""
    torch.set_num_threads(int(os.environ.get("DGP_TEST_THREADS", "1")))


def shared_path() -> Path:
    """``../shared`` next to the repository (or ``$DGP_SHARED``)."""
    return Path(os.environ.get("DGP_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared folder; tests that use it skip when it is absent."""
    path = shared_path()
    if not path.is_dir():
        pytest.skip(f"shared folder not found at {path} (set DGP_SHARED to its location)")
    return path


TINY_CLASSES = ["red", "green", "blue"]


def make_tiny_config() -> BigGANConfig:
    """A 32x32, 3-class BigGAN small enough to run in milliseconds."""
    return BigGANConfig(resolution=32, G_ch=4, D_ch=4, dim_z=32, shared_dim=16, n_classes=3,
                        G_attn="16", D_attn="16")


def make_tiny_prior(config: BigGANConfig | None = None) -> Prior:
    """A :class:`Prior` with random weights (seed 0), classes red/green/blue, eval mode, CPU."""
    config = config or make_tiny_config()
    torch.manual_seed(0)
    G = Generator(config).eval()
    D = Discriminator(config).eval()
    return Prior(name="tiny", G=G, D=D, class_names=list(TINY_CLASSES),
                 card={"architecture": config.to_dict(), "class_names": list(TINY_CLASSES)})


@pytest.fixture
def tiny_config() -> BigGANConfig:
    """A 32x32, 3-class BigGAN small enough to run in milliseconds."""
    return make_tiny_config()


@pytest.fixture
def tiny_prior(tiny_config: BigGANConfig) -> Prior:
    """A fresh :class:`Prior` with random (seeded) weights, classes red/green/blue, eval mode, CPU."""
    return make_tiny_prior(tiny_config)


@pytest.fixture(scope="module")
def module_prior() -> Prior:
    """The same tiny prior as ``tiny_prior``, shared by a test module (for tests that only read it, e.g. to
    reconstruct once and check several things on the result)."""
    return make_tiny_prior()


@pytest.fixture(scope="session")
def released_manifest(shared_dir: Path) -> dict:
    """Key -> shape manifests of the released checkpoints (``checkpoint_keys.json``: ``128``, ``256``, ``ch64_256``)."""
    path = shared_dir / "fixtures" / "biggan" / "checkpoint_keys.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    return json.loads(path.read_text())


def write_fake_weights(path: Path, shapes: dict[str, list[int]]) -> Path:
    """Write a ``.pth`` with the given keys and shapes but no real weights: every tensor is a stride-0 view of
    one zero, so ``torch.save`` stores a few bytes per tensor instead of hundreds of megabytes."""
    torch.save({k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}, path)
    return path


@pytest.fixture
def fake_released(released_manifest: dict):  # noqa: ANN201
    """``fake_released(folder, file_name, manifest_key, part)`` writes a fake released file (``part``: ``"G_ema"``
    or ``"D"``) with the shapes of ``released_manifest[manifest_key]``."""

    def write(folder: Path, file_name: str, manifest_key: str, part: str) -> Path:
        return write_fake_weights(folder / file_name, released_manifest[manifest_key][part])

    return write
