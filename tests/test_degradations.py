"""Property tests over every registered degradation, plus behaviour of each operator and the parser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dgp.degradations import (
    DEGRADATIONS,
    PRESET_DEGRADATIONS,
    Chain,
    Degradation,
    Downsample,
    GaussianNoise,
    Grayscale,
    Identity,
    Mask,
    center_hole,
    free_form_strokes,
    lanczos2_kernel,
    mask_from_image,
    parse_degradation,
    random_boxes,
)

SIZES = [(32, 32), (37, 29)]


def _image(size: tuple[int, int], seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g) * 2 - 1


def _smooth_image(size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    channels = [
        torch.sin(2 * math.pi * (1.5 * xx + 0.5 * yy)),
        torch.cos(2 * math.pi * yy) * 0.8,
        0.5 * torch.sin(6 * (xx + yy)),
    ]
    return (torch.stack(channels) * 0.9).unsqueeze(0)


def _build(name: str, size: tuple[int, int], seed: int = 0) -> Degradation:
    return DEGRADATIONS[name](size, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- registry properties


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_shapes(name: str, size: tuple[int, int]) -> None:
    op = _build(name, size)
    x = _image(size)
    obs_size = op.observation_size(size)
    assert op(x).shape == (2, 3, *obs_size)
    y = op.observe(x, torch.Generator().manual_seed(1))
    assert y.shape == (2, 3, *obs_size)
    assert not y.requires_grad
    assert op.lift(y, size).shape == (2, 3, *size)
    assert op.lift(op(x), size).shape == (2, 3, *size)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_gradients_flow(name: str) -> None:
    size = (37, 29)
    op = _build(name, size)
    x = _image(size).requires_grad_(True)
    op.lift(op(x), size).square().sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_observe_matches_forward_where_it_should(name: str) -> None:
    size = (32, 32)
    op = _build(name, size)
    x = _image(size)
    expected = name in {"id", "gray", "hole", "boxes", "strokes"}
    assert op.observe_is_forward == expected
    if expected:
        torch.testing.assert_close(op.observe(x), op(x))


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_observation_in_range(name: str) -> None:
    size = (32, 32)
    y = _build(name, size).observe(_image(size), torch.Generator().manual_seed(3))
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_hole_mask_convention(name: str) -> None:
    size = (37, 29)
    op = _build(name, size)
    hole = op.hole_mask(size)
    if name in {"hole", "boxes", "strokes"}:
        assert hole is not None and hole.shape == (1, 1, *size)
        assert set(hole.unique().tolist()) == {0.0, 1.0}
        # missing pixels are exactly those zeroed by the operator
        x = torch.ones(1, 3, *size)
        torch.testing.assert_close(op(x), (1 - hole).expand(1, 3, -1, -1))
    else:
        assert hole is None


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_name_parses_back(name: str) -> None:
    size = (32, 32)
    op = _build(name, size, seed=5)
    again = parse_degradation(op.name, size, torch.Generator().manual_seed(5))
    assert again.name == op.name
    x = _image(size)
    torch.testing.assert_close(again(x), op(x))


# ----------------------------------------------------------------------------------------- chains


def test_chain_gray_hole_equals_composition() -> None:
    size = (37, 29)
    x = _image(size)
    gray, hole = Grayscale(), Mask(center_hole(*size), name="hole")
    chain = parse_degradation("gray+hole", size)
    assert isinstance(chain, Chain) and chain.name == "gray+hole"
    torch.testing.assert_close(chain(x), hole(gray(x)))
    torch.testing.assert_close(chain.observe(x), hole.observe(gray.observe(x)))
    torch.testing.assert_close(chain.hole_mask(size), hole.hole_mask(size))


def test_hybrid_chain_sizes_and_lift() -> None:
    size = (64, 48)
    chain = parse_degradation("hybrid", size)
    assert chain.name == "down2+gray+hole"
    assert chain.observation_size(size) == (32, 24)
    x = _image(size)
    y = chain.observe(x)
    assert y.shape == (2, 3, 32, 24)
    lifted = chain.lift(y, size)
    torch.testing.assert_close(lifted, F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    # the hole (built at clean size) is applied after the downsample: centred in the small image too
    hole_small = y[:, :, 12:20, 8:16]
    assert torch.all(hole_small == 0)
    hole = chain.hole_mask(size)
    assert hole is not None and hole.shape == (1, 1, *size)
    assert hole.sum() == (min(size) // 3) ** 2


def test_chain_lift_uses_intermediate_sizes() -> None:
    size = (40, 40)
    chain = Chain([Downsample(2), Downsample(2)])
    assert chain.observation_size(size) == (10, 10)
    y = torch.zeros(1, 3, 10, 10)
    assert chain.lift(y, size).shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match="size"):
        chain.lift(torch.zeros(1, 3, 20, 20), size)


def test_chain_observe_shares_generator() -> None:
    chain = parse_degradation("noise0.1+noise0.1")
    x = torch.zeros(1, 3, 16, 16)
    a = chain.observe(x, torch.Generator().manual_seed(0))
    b = chain.observe(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    # two draws in a row, not the same noise twice
    single = GaussianNoise(0.1).observe(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, (2 * single).clamp(-1, 1))


def test_chain_rejects_bad_ops() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Chain([])
    with pytest.raises(TypeError, match=r"ops\[1\]"):
        Chain([Identity(), torch.nn.Identity()])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------- gray


def test_grayscale_weights() -> None:
    x = -torch.ones(1, 3, 4, 4)
    x[:, 0] = 1.0  # pure red
    y = Grayscale()(x)
    torch.testing.assert_close((y + 1) / 2, torch.full_like(y, 0.2989))
    white = Grayscale()(torch.ones(1, 3, 4, 4))
    assert torch.allclose(white, torch.ones_like(white), atol=2e-4)


def test_grayscale_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Grayscale()(torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("size", [(64, 64), (37, 29), (30, 90)])
def test_center_hole_size_and_position(size: tuple[int, int]) -> None:
    h, w = size
    keep = center_hole(h, w)
    side = min(h, w) // 3
    assert keep.shape == (1, 1, h, w)
    missing = (keep[0, 0] == 0).nonzero()
    assert len(missing) == side * side
    top, left = missing.min(dim=0).values.tolist()
    bottom, right = (missing.max(dim=0).values + 1).tolist()
    assert (bottom - top, right - left) == (side, side)
    assert abs(top - (h - bottom)) <= 1 and abs(left - (w - right)) <= 1


def _mask_png(tmp_path, size=(40, 40), box=(10, 10, 20, 30), mode="L", fill=255, background=0):
    im = Image.new(mode, (size[1], size[0]), background)
    block = Image.new(mode, (box[3] - box[1], box[2] - box[0]), fill)
    im.paste(block, (box[1], box[0]))
    path = tmp_path / "mask.png"
    im.save(path)
    return path


def test_mask_from_image_white_is_missing(tmp_path) -> None:
    path = _mask_png(tmp_path)
    keep = mask_from_image(path, (40, 40))
    assert keep.shape == (1, 1, 40, 40)
    assert torch.all(keep[..., 10:20, 10:30] == 0)
    assert keep.sum() == 40 * 40 - 10 * 20
    inverted = mask_from_image(path, (40, 40), missing_is_white=False)
    torch.testing.assert_close(inverted, 1 - keep)
    op = parse_degradation("mask", (40, 40), mask_path=path)
    assert op.name == "mask"
    torch.testing.assert_close(op.hole_mask((40, 40)), 1 - keep)


def test_mask_from_image_resizes_and_accepts_pil(tmp_path) -> None:
    path = _mask_png(tmp_path, size=(80, 80), box=(20, 20, 40, 60))
    keep = mask_from_image(path, (40, 40))
    assert keep.shape == (1, 1, 40, 40)
    assert torch.all(keep[..., 10:20, 10:30] == 0)
    assert keep.sum() == 40 * 40 - 10 * 20
    rgb = Image.open(path).convert("RGB")
    torch.testing.assert_close(mask_from_image(rgb, (40, 40)), keep)


def test_mask_from_image_transparent_background(tmp_path) -> None:
    path = _mask_png(tmp_path, mode="RGBA", fill=(255, 255, 255, 255), background=(0, 0, 0, 0))
    keep = mask_from_image(path, (40, 40))
    assert keep.sum() == 40 * 40 - 10 * 20


@pytest.mark.parametrize(
    ("fill", "background", "message"),
    [(0, 0, "no pixel"), (255, 255, "every pixel"), (128, 100, "binary")],
)
def test_mask_from_image_invalid(tmp_path, fill: int, background: int, message: str) -> None:
    path = _mask_png(tmp_path, fill=fill, background=background)
    with pytest.raises(ValueError, match=message):
        mask_from_image(path, (40, 40))


def test_mask_from_image_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        mask_from_image(tmp_path / "nope.png", (32, 32))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        mask_from_image(bad, (32, 32))


def test_mask_resized_to_input() -> None:
    op = Mask(center_hole(32, 32), name="hole")
    small = op(torch.ones(1, 3, 16, 16))
    assert small.shape == (1, 3, 16, 16)
    assert (small[0, 0] == 0).sum() == 25  # 10x10 hole -> 5x5 after nearest resizing
    assert torch.all(small[0, :, 5:10, 5:10] == 0)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.full((8, 8), 0.5), "only 0"),
        (torch.ones(8, 8), "no missing"),
        (torch.zeros(8, 8), "every pixel"),
        (torch.ones(2, 1, 8, 8), "shape"),
    ],
)
def test_mask_validation(mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Mask(mask)


def test_mask_accepts_2d_and_bool() -> None:
    keep = center_hole(12, 12)[0, 0].bool()
    assert Mask(keep).mask.shape == (1, 1, 12, 12)


@pytest.mark.parametrize("factory", [random_boxes, free_form_strokes], ids=["boxes", "strokes"])
def test_random_masks_reproducible(factory) -> None:
    def draw(seed: int) -> torch.Tensor:
        return factory(48, 40, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (1, 1, 48, 40)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert 0 < (a == 0).float().mean() < 0.9


def test_random_boxes_count_and_validation() -> None:
    one = random_boxes(64, 64, 1, torch.Generator().manual_seed(0), min_frac=0.25, max_frac=0.25)
    assert (one == 0).sum() == 16 * 16
    with pytest.raises(ValueError, match="n must"):
        random_boxes(8, 8, 0)
    with pytest.raises(ValueError, match="min_frac"):
        random_boxes(8, 8, 1, min_frac=0.5, max_frac=0.2)
    assert parse_degradation("boxes5", (32, 32)).name == "boxes5"


# ------------------------------------------------------------------------------------- downsample


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel(factor: int) -> None:
    k = lanczos2_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.t())
    assert k.max() == k[2 * factor - 1, 2 * factor - 1]


@pytest.mark.parametrize("factor", [2, 4])
def test_lanczos_agrees_with_antialiased_observation(factor: int) -> None:
    x = _smooth_image((64, 64))
    op = Downsample(factor)
    diff = (op(x) - op.observe(x)).abs()
    assert diff.mean() < 5e-3
    border = 2
    assert diff[..., border:-border, border:-border].max() < 2e-2


def test_downsample_constant_image_and_sizes() -> None:
    x = torch.full((1, 3, 37, 29), 0.3)
    op = Downsample(4)
    torch.testing.assert_close(op(x), torch.full((1, 3, 9, 7), 0.3))
    torch.testing.assert_close(op.observe(x), torch.full((1, 3, 9, 7), 0.3))
    assert op.observation_size((37, 29)) == (9, 7)


def test_downsample_validation() -> None:
    with pytest.raises(ValueError, match="factor must be one of"):
        Downsample(3)
    with pytest.raises(ValueError, match="smaller than the factor"):
        Downsample(8)(torch.zeros(1, 3, 4, 16))
    with pytest.raises(ValueError, match="expected"):
        Downsample(2).lift(torch.zeros(1, 3, 8, 8), (32, 32))


# ------------------------------------------------------------------------------------------ noise


def test_noise_std_and_reproducibility() -> None:
    op = GaussianNoise(0.1)
    x = torch.zeros(1, 3, 64, 64)
    y = op.observe(x, torch.Generator().manual_seed(0))
    assert abs(y.std().item() - 0.2) < 0.01  # sigma on [0, 1] -> 2 sigma on [-1, 1]
    assert abs(y.mean().item()) < 0.01
    torch.testing.assert_close(y, op.observe(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(y, op.observe(x, torch.Generator().manual_seed(1)))
    assert op(x) is x or torch.equal(op(x), x)


def test_noise_validation() -> None:
    for bad in (-0.1, 2.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            GaussianNoise(bad)
    assert GaussianNoise(0.05).name == "noise0.05"


# ---------------------------------------------------------------------------------------- parsing


def test_presets_parse() -> None:
    for preset, text in PRESET_DEGRADATIONS.items():
        op = parse_degradation(preset, (48, 48))
        assert op.name == text
    assert parse_degradation(" Gray + HOLE ", (32, 32)).name == "gray+hole"
    assert isinstance(parse_degradation("identity"), Identity)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("blur", "valid tokens"),
        ("gray+sepia", "valid tokens"),
        ("down3", "factor must be one of"),
        ("noisex", "noiseS"),
        ("noise-1", "sigma"),
        ("", "empty"),
        ("gray++hole", "empty"),
        ("boxes0", "at least 1"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_degradation(text, (32, 32))


def test_parse_needs_size_and_mask_path() -> None:
    with pytest.raises(ValueError, match="size"):
        parse_degradation("hole")
    with pytest.raises(ValueError, match="mask_path"):
        parse_degradation("mask", (32, 32))
    with pytest.raises(ValueError, match="size"):
        parse_degradation("hole", (0, 32))
