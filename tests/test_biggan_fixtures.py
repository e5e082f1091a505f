"""Our BigGAN reproduces the original DGP / BigGAN-PyTorch model code on the reference fixtures.

The fixtures (``../shared/fixtures/biggan``) hold state dicts in the original key naming and the outputs the
original implementation computed from them; loading goes through the released-checkpoint path
(``torch.save`` -> :func:`dgp.priors.checkpoint.load_released`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import load_released

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module", params=[32, 128, 256], ids=lambda r: f"res{r}")
def reference(request: pytest.FixtureRequest, shared_dir: Path) -> dict:
    path = shared_dir / "fixtures" / "biggan" / f"biggan_reference_{request.param}.pt"
    if not path.is_file():
        pytest.skip(f"fixture {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def models(reference: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Generator, Discriminator]:
    """G and D loaded from the fixture's state dicts, shared by the tests of one resolution (read-only use)."""
    folder = tmp_path_factory.mktemp("released")
    g_path, d_path = folder / "G_ema.pth", folder / "D.pth"
    torch.save(reference["G_state"], g_path)
    torch.save(reference["D_state"], d_path)
    G, D = load_released(BigGANConfig.from_dict(reference["config"]), g_path, d_path)
    assert D is not None and not G.training and not D.training
    return G, D


def test_generator_output(reference: dict, models: tuple[Generator, Discriminator]) -> None:
    G, _ = models
    with torch.no_grad():
        out = G(reference["z"], G.shared(reference["y"]))
    assert out.shape == reference["G_out"].shape
    torch.testing.assert_close(out, reference["G_out"], rtol=RTOL, atol=ATOL)


def test_generator_instance_norm_output(reference: dict, models: tuple[Generator, Discriminator]) -> None:
    G, _ = models
    z, y = reference["z"][:1], reference["y"][:1]
    with torch.no_grad():
        out = G(z, G.shared(y), use_in=True)
    torch.testing.assert_close(out, reference["G_out_use_in"], rtol=RTOL, atol=ATOL)
    # The switch is not a no-op: batch norm gives a visibly different image for the same input.
    assert (out - reference["G_out"][:1]).abs().max() > 1e-3


def test_discriminator_outputs(reference: dict, models: tuple[Generator, Discriminator]) -> None:
    _, D = models
    x, y = reference["G_out"], reference["y"]
    with torch.no_grad():
        logit, features = D(x, y)
        logit_uncond, _ = D(x)
    torch.testing.assert_close(logit, reference["D_out"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(logit_uncond, reference["D_out_uncond"], rtol=RTOL, atol=ATOL)
    assert len(features) == len(reference["D_features"]) == D.num_features
    for i, (ours, theirs) in enumerate(zip(features, reference["D_features"])):
        assert ours.shape == theirs.shape, f"feature {i}"
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL, msg=lambda m, i=i: f"feature {i}: {m}")
