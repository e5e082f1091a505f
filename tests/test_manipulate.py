"""Editing with a reconstruction: jitter, category transfer and morphing render from the tuned generator.

Two short reconstructions of images the prior makes (one per class) are shared by the module; every check
compares renderings against those reconstructions, so a manipulation that loses the tuned weights, the
latent or the instance-norm state shows up as a frame that does not match.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from dgp.degradations import Identity
from dgp.manipulate import jitter, morph, save_gif, transfer
from dgp.priors.registry import Prior
from dgp.reconstruct import DGPReconstructor, Result
from dgp.schedule import Schedule, Stage

ATOL = 1e-5


def _reconstruct(prior: Prior, class_id: int, seed: int, use_in: bool = False) -> Result:
    z = torch.randn(1, prior.G.dim_z, generator=torch.Generator().manual_seed(seed)) * 0.4
    with torch.no_grad():
        image = prior.G(z, prior.G.shared(torch.tensor([class_id])))
    stages = (Stage(4, 1e-3, 2e-2, ft_num=2, w_mse=1.0), Stage(3, 1e-3, 1e-2, w_mse=1.0, use_in=use_in))
    schedule = Schedule("test", stages, w_nll=0.2, n_candidates=4, update_embed=True)
    return DGPReconstructor(prior, schedule)(image, Identity(), class_id, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair(module_prior: Prior) -> tuple[Result, Result]:
    """Reconstructions of a class-0 and a class-2 image."""
    return _reconstruct(module_prior, 0, seed=1), _reconstruct(module_prior, 2, seed=2)


@pytest.fixture(scope="module")
def pair_in(module_prior: Prior) -> tuple[Result, Result]:
    """The same, with the last stage run with instance norm."""
    return _reconstruct(module_prior, 0, seed=1, use_in=True), _reconstruct(module_prior, 2, seed=2, use_in=True)


def test_jitter_shape_order_and_seeds(module_prior: Prior, pair: tuple[Result, Result]) -> None:
    a = pair[0]
    images = jitter(module_prior, a, sigmas=(0.3, 0.7), per_sigma=3, generator=torch.Generator().manual_seed(5))
    assert images.shape == (6, 3, 32, 32)
    again = jitter(module_prior, a, sigmas=(0.3, 0.7), per_sigma=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(images, again)
    other = jitter(module_prior, a, sigmas=(0.3, 0.7), per_sigma=3, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(images, other, atol=1e-3)
    # Rows are grouped by sigma in the order given: the first sigma's rows do not depend on the later ones.
    first = jitter(module_prior, a, sigmas=(0.3,), per_sigma=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, images[:3], atol=ATOL, rtol=0)
    # Samples within a sigma differ from each other and from the reconstruction.
    assert not torch.allclose(images[0], images[1], atol=1e-3)
    assert not torch.allclose(images[0:1], a.image, atol=1e-3)


@pytest.mark.parametrize("use_in", [False, True])
def test_jitter_with_sigma_zero_is_the_reconstruction(module_prior: Prior, pair: tuple[Result, Result],
                                                      pair_in: tuple[Result, Result], use_in: bool) -> None:
    a = (pair_in if use_in else pair)[0]
    assert a.use_in == use_in
    images = jitter(module_prior, a, sigmas=(0.0,), per_sigma=2)
    torch.testing.assert_close(images, a.image.expand(2, -1, -1, -1), atol=ATOL, rtol=0)


def test_jitter_validation(module_prior: Prior, pair: tuple[Result, Result]) -> None:
    with pytest.raises(ValueError, match="per_sigma must be at least 1"):
        jitter(module_prior, pair[0], per_sigma=0)


def test_transfer_renders_the_tuned_generator_under_other_classes(module_prior: Prior,
                                                                   pair: tuple[Result, Result]) -> None:
    a = pair[0]
    images = transfer(module_prior, a, [0, 1, 2])
    assert images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images[0:1], a.image, atol=ATOL, rtol=0)  # its own class: the reconstruction
    assert not torch.allclose(images[1:2], a.image, atol=1e-3) and not torch.allclose(images[1], images[2])
    torch.testing.assert_close(transfer(module_prior, a, [2, 1]), images[[2, 1]], atol=ATOL, rtol=0)  # order kept
    with pytest.raises(ValueError, match=r"class id 3 out of range 0..2"):
        transfer(module_prior, a, [0, 3])


@pytest.mark.parametrize("use_in", [False, True])
def test_morph_goes_from_one_reconstruction_to_the_other(module_prior: Prior, pair: tuple[Result, Result],
                                                         pair_in: tuple[Result, Result], use_in: bool) -> None:
    a, b = pair_in if use_in else pair
    frames = morph(module_prior, a, b, frames=5)
    assert frames.shape == (5, 3, 32, 32)
    torch.testing.assert_close(frames[0:1], a.image, atol=ATOL, rtol=0)
    torch.testing.assert_close(frames[-1:], b.image, atol=ATOL, rtol=0)
    middle = frames[2:3]
    assert not torch.allclose(middle, a.image, atol=1e-2) and not torch.allclose(middle, b.image, atol=1e-2)


def test_morph_interpolates_the_tuned_generators(module_prior: Prior, pair: tuple[Result, Result]) -> None:
    a, b = pair
    # Same z, class embedding and use_in as a, but b's tuned weights: the frames change only through G's weights.
    b_weights = dataclasses.replace(a, generator_state=b.generator_state, image=b.generator(module_prior)(
        a.z, a.class_embedding).detach())
    frames = morph(module_prior, a, b_weights, frames=3)
    torch.testing.assert_close(frames[-1:], b_weights.image, atol=ATOL, rtol=0)
    assert not torch.allclose(frames[0], frames[-1], atol=1e-3)
    # Morphing a result into itself changes nothing.
    same = morph(module_prior, a, a, frames=3)
    torch.testing.assert_close(same, a.image.expand(3, -1, -1, -1), atol=ATOL, rtol=0)


def test_morph_validation(module_prior: Prior, pair: tuple[Result, Result], pair_in: tuple[Result, Result]) -> None:
    with pytest.raises(ValueError, match="frames must be at least 2"):
        morph(module_prior, pair[0], pair[1], frames=1)
    with pytest.raises(ValueError, match="same normalisation"):
        morph(module_prior, pair[0], pair_in[1])


def test_save_gif_writes_a_looping_animation(tmp_path: Path, module_prior: Prior,
                                             pair: tuple[Result, Result]) -> None:
    frames = morph(module_prior, pair[0], pair[1], frames=4)
    path = tmp_path / "morph.gif"
    save_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.size == (32, 32)
        assert gif.n_frames == 6  # forward then back: 0 1 2 3 2 1
        assert gif.info.get("loop") == 0
    save_gif(frames, path, boomerang=False)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
    with pytest.raises(FileExistsError, match="exists"):
        save_gif(frames, path, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["morph.gif"]  # no temporary files left
