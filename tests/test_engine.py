"""The DGP engine on a tiny random prior: schedules, the objective, the latent search and the progressive
reconstructor.

The behavioural checks use targets the prior can make exactly (``G(z, class)`` for a known ``z``), so that
"restored" has a ground truth: a reconstruction must recover such a target to a high PSNR, and on degraded
inputs it must end closer to the clean target than the observation itself is.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from dgp.colorspace import rgb_to_lab
from dgp.degradations import Degradation, Identity, parse_degradation
from dgp.metrics import psnr
from dgp.objective import Objective, feature_distance
from dgp.pipeline import TASKS, default_schedule, is_colorization, preset_for, restore
from dgp.priors.registry import Prior
from dgp.reconstruct import (DGPReconstructor, ReconstructionError, Result, StepEvent, draw_candidates, search_latent,
                             search_latents)
from dgp.schedule import PRESETS, Schedule, Stage, get_preset

SIZE = (32, 32)


def prior_image(prior: Prior, class_id: int, seed: int, std: float = 0.3) -> tuple[Tensor, Tensor]:
    """``(z (1, dim_z), image (1, 3, R, R))``: an image the prior makes exactly, from ``z ~ N(0, std^2)``."""
    z = torch.randn(1, prior.G.dim_z, generator=torch.Generator().manual_seed(seed)) * std
    with torch.no_grad():
        return z, prior.G(z, prior.G.shared(torch.tensor([class_id])))


def schedule(*stages: Stage, **settings) -> Schedule:
    """A test schedule: latent search from z = 0 and no latent prior term unless asked."""
    return Schedule("test", stages, **{"n_candidates": 0, "w_nll": 0.0, **settings})


def group_tensors(G: torch.nn.Module, index: int, with_embedding: bool = False) -> list[Tensor]:
    """Every parameter and buffer of parameter group ``index`` of ``G``, in a fixed order."""
    return [t for m in G.group_modules(index, with_embedding) for t in m.state_dict().values()]


def group_step(tuned: torch.nn.Module, prior: Prior, index: int, with_embedding: bool = False) -> float:
    """Largest absolute change of any parameter of group ``index`` from the prior to ``tuned``."""
    pairs = zip(tuned.param_groups(with_embedding)[index], prior.G.param_groups(with_embedding)[index])
    return max(float((a - b).detach().abs().max()) for a, b in pairs)


# --------------------------------------------------------------------------------------------- schedule


def test_group_learning_rates_follow_the_ratio_and_stop_at_ft_num() -> None:
    stage = Stage(1, lr_G=1e-3, lr_z=0.0, ft_num=3, lr_ratio=0.5)
    assert stage.group_lrs(5) == pytest.approx([1e-3, 5e-4, 2.5e-4, 0.0, 0.0])
    assert Stage(1, 1e-3, 0.0, ft_num=None, lr_ratio=0.5).group_lrs(3) == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert Stage(1, 1e-3, 0.0, ft_num=9).group_lrs(3) == pytest.approx([1e-3] * 3)  # clipped to the groups
    assert Stage(1, 1e-3, 0.0, ft_num=0).group_lrs(3) == [0.0, 0.0, 0.0]


def test_feature_counts_are_mapped_from_the_128_model() -> None:
    # ftr_num counts on the 8-feature D of the 128 model; other Ds keep out the same number of shallow features.
    assert [Stage(1, 0, 0, ftr_num=k).feature_count(8) for k in (8, 7, 3)] == [8, 7, 3]
    assert [Stage(1, 0, 0, ftr_num=k).feature_count(9) for k in (8, 7)] == [9, 8]
    assert [Stage(1, 0, 0, ftr_num=k).feature_count(4) for k in (8, 7, 2)] == [4, 3, 1]


def test_presets_hold_the_released_settings() -> None:
    color = get_preset("colorization")
    assert [s.iterations for s in color.stages] == [200, 200, 300, 400, 300]
    assert [s.ft_num for s in color.stages] == [2, 3, 4, 5, 6]
    assert [s.lr_ratio for s in color.stages] == [0.7, 0.7, 0.8, 0.9, 1.0]
    assert {(s.ftr_num, s.w_D, s.w_mse) for s in color.stages} == {(7, 1.0, 0.0)}
    assert (color.sample_std, color.w_nll, color.update_embed) == (0.5, 0.02, False)
    sr = get_preset("sr")
    assert [s.ft_num for s in sr.stages] == [2, 3, 4, 5, None] and sr.sample_std == 0.3
    assert all(s.use_in for s in get_preset("sr-mse").stages)
    inpaint = get_preset("inpainting")
    assert inpaint.update_embed and all(s.ft_num is None for s in inpaint.stages)
    assert [s.w_mse for s in inpaint.stages] == [1.0, 1.0, 1.0, 1.0, 10.0]
    assert get_preset("manipulation").w_nll == 0.2 and get_preset("morphing").update_embed
    assert not any(p.tune_output_layer for p in PRESETS.values())
    with pytest.raises(ValueError, match="unknown preset 'nope'; known presets: colorization"):
        get_preset("nope")


def test_schedule_scaling_and_round_trip() -> None:
    small = get_preset("sr").scaled(iterations=0.01, candidates=0.01)
    assert [s.iterations for s in small.stages] == [2] * 5 and small.n_candidates == 5
    assert get_preset("sr").scaled(iterations=1e-6).total_iterations == 5  # at least one step per stage
    assert Schedule.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError, match="unknown schedule settings: lr"):
        Schedule.from_dict({**small.to_dict(), "lr": 1.0})


@pytest.mark.parametrize("settings,message", [
    ({"iterations": -1}, "iterations must be >= 0"),
    ({"lr_G": float("nan")}, "learning rates must be finite"),
    ({"lr_z": -1e-3}, "learning rates must be finite and >= 0"),
    ({"w_mse": -1.0}, "loss weights must be finite and >= 0"),
    ({"ftr_num": 0}, "ftr_num must be >= 1"),
    ({"lr_ratio": 0.0}, "lr_ratio must be > 0"),
    ({"ft_num": -1}, "ft_num must be >= 0 or None"),
])
def test_stage_rejects_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stage(**{"iterations": 1, "lr_G": 1e-3, "lr_z": 1e-3, **settings})


def test_schedule_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        Schedule("x", ())
    with pytest.raises(ValueError, match="n_candidates must be >= 0"):
        Schedule("x", (Stage(1, 0, 0),), n_candidates=-1)
    with pytest.raises(ValueError, match="w_nll must be finite"):
        Schedule("x", (Stage(1, 0, 0),), w_nll=float("inf"))


# --------------------------------------------------------------------------------------------- objective


def test_feature_distance_uses_only_the_last_features() -> None:
    fake = [torch.full((2, 3), 5.0), torch.ones(2, 4, 2, 2), torch.zeros(2, 5)]
    real = [torch.zeros(1, 3), torch.zeros(1, 4, 2, 2), torch.full((1, 5), 2.0)]  # batch 1 broadcasts
    torch.testing.assert_close(feature_distance(fake, real, 2), torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(feature_distance(fake, real, 3), torch.tensor([8.0, 8.0]))


def test_objective_terms_and_gradients(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 0, seed=1)
    objective = Objective(tiny_prior.D, target)
    z = torch.randn(2, tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(2))
    x = torch.cat([target, target.flip(-1)]).requires_grad_(True)  # image 0 equals the target
    terms = objective(x, z, feature_count=8, w_D=2.0, w_mse=3.0, w_nll=0.5)
    assert terms.total.shape == (2,)
    features, mse = terms.features.detach(), terms.mse.detach()
    assert float(features[0]) == pytest.approx(0.0, abs=1e-5) and float(mse[0]) == 0.0  # batched conv rounding
    assert float(features[1]) > 0.01 and float(mse[1]) > 0.01
    torch.testing.assert_close(terms.nll, (z**2 / 2).mean(dim=1))
    torch.testing.assert_close(terms.total, 2.0 * terms.features + 3.0 * terms.mse + 0.5 * terms.nll)
    terms.total.sum().backward()
    assert x.grad is not None and float(x.grad[1].abs().sum()) > 0.0
    # Gradients reach the images, never the prior's discriminator.
    assert all(p.grad is None for p in tiny_prior.D.parameters())


def test_objective_keeps_zero_weight_terms_out_of_the_graph(tiny_prior: Prior) -> None:
    """Terms with weight 0 are recorded with the same values but get no backward work, and the gradient of the
    total is unchanged; with every weight 0 the total can still be differentiated."""
    _, target = prior_image(tiny_prior, 0, seed=1)
    objective = Objective(tiny_prior.D, target)
    z = torch.randn(1, tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    x = target.flip(-1).requires_grad_(True)
    full = objective(x, z, 8, 1.0, 1e-12, 0.5)
    lean = objective(x, z, 8, 1.0, 0.0, 0.5)
    assert lean.mse.grad_fn is None and lean.features.grad_fn is not None and lean.nll.grad_fn is not None
    torch.testing.assert_close(lean.mse, full.mse)
    grads = [torch.autograd.grad(t.total.sum(), [x, z]) for t in (full, lean)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    none = objective(x, z, 8, 0.0, 0.0, 0.0)
    assert none.total.requires_grad and none.features.grad_fn is not None


# ---------------------------------------------------------------------------------------- latent search


def _scores(prior: Prior, degradation: Degradation, target: Tensor, z: Tensor, y: Tensor, count: int = 3) -> Tensor:
    """Independent scoring of candidates: summed mean |D feature difference| over the last ``count`` features."""
    with torch.no_grad():
        fake = prior.D(degradation.lift(degradation(prior.G(z, prior.G.shared(y))), SIZE))[1]
        real = prior.D(target)[1]
    return sum((f - r).abs().flatten(1).mean(1) for f, r in zip(fake[-count:], real[-count:]))


def test_zero_candidates_start_from_zero(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 1, seed=3)
    sched = schedule(Stage(0, 0.0, 0.0))
    z, c = search_latent(tiny_prior, Objective(tiny_prior.D, target), Identity(), sched, 2, torch.Generator())
    assert c == 2 and torch.equal(z, torch.zeros(1, tiny_prior.G.dim_z))
    # Through the reconstructor with a stage of 0 steps, the result is the search's start.
    result = DGPReconstructor(tiny_prior, sched)(target, Identity(), 2)
    assert torch.equal(result.z, torch.zeros(1, tiny_prior.G.dim_z)) and result.history == []


def test_zero_candidates_unknown_class_picks_the_best_class(tiny_prior: Prior) -> None:
    gray = parse_degradation("gray")
    _, clean = prior_image(tiny_prior, 1, seed=3)
    target = gray.observe(clean)
    z, c = search_latent(tiny_prior, Objective(tiny_prior.D, target), gray, schedule(Stage(0, 0.0, 0.0)), None,
                         torch.Generator())
    zeros = torch.zeros(3, tiny_prior.G.dim_z)
    assert 0 <= c < tiny_prior.n_classes
    assert c == int(_scores(tiny_prior, gray, target, zeros, torch.arange(3)).argmin())


def test_one_candidate_is_one_standard_normal_draw(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 0, seed=3)
    sched = schedule(Stage(0, 0.0, 0.0), n_candidates=1, sample_std=0.1)
    z, _ = search_latent(tiny_prior, Objective(tiny_prior.D, target), Identity(), sched, 0,
                         torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, torch.randn(1, tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("class_id", [1, None])
def test_search_keeps_the_candidate_with_the_lowest_score(tiny_prior: Prior, class_id: int | None) -> None:
    gray = parse_degradation("gray")
    _, clean = prior_image(tiny_prior, 2, seed=4)
    target = gray.observe(clean)
    sched = schedule(Stage(0, 0.0, 0.0), n_candidates=8, sample_std=0.5)
    z, c = search_latent(tiny_prior, Objective(tiny_prior.D, target), gray, sched, class_id,
                         torch.Generator().manual_seed(9), batch_size=3)  # batches of 3, 3 and 2
    z_all, y_all = draw_candidates(8, tiny_prior.G.dim_z, 0.5, 3, class_id, torch.Generator().manual_seed(9))
    scores = _scores(tiny_prior, gray, target, z_all, y_all)
    best = int(scores.argmin())
    assert float(scores[best]) < float(scores.max())  # the candidates really differ
    assert torch.equal(z, z_all[best:best + 1]) and c == int(y_all[best])
    if class_id is None:
        assert len(set(y_all.tolist())) > 1 and 0 <= c < tiny_prior.n_classes  # classes are drawn too
    else:
        assert c == class_id


@pytest.mark.parametrize("n_candidates", [8, 0])
def test_images_with_the_same_draws_share_one_search(tiny_prior: Prior, monkeypatch: pytest.MonkeyPatch,
                                                     n_candidates: int) -> None:
    gray, down = parse_degradation("gray"), parse_degradation("down2")
    size = tiny_prior.resolution
    cleans = [prior_image(tiny_prior, i % 3, seed=20 + i)[1] for i in range(6)]
    # images 0, 1 and 4 draw alike (seed 9, class unknown), 1 through another gray operator and 4 through a
    # downsampling; 2 has its own seed, 3 seed 9 but a known class; 5 reuses image 0's generator, which draws on
    one = torch.Generator().manual_seed(9)
    generators = [one, torch.Generator().manual_seed(9), torch.Generator().manual_seed(2),
                  torch.Generator().manual_seed(9), torch.Generator().manual_seed(9), one]
    classes = [None, None, None, 1, None, None]
    degradations = [gray, parse_degradation("gray"), gray, gray, down, gray]
    objectives = [Objective(tiny_prior.D, d.lift(d.observe(c), (size, size))) for d, c in zip(degradations, cleans)]
    sched = schedule(Stage(0, 0.0, 0.0), n_candidates=n_candidates, sample_std=0.5)
    alone = []
    for i in range(6):
        g = torch.Generator().manual_seed(9 if i != 2 else 2)
        if i == 5:  # a second search from image 0's generator
            search_latent(tiny_prior, objectives[0], gray, sched, None, g, batch_size=3)
        alone.append((search_latent(tiny_prior, objectives[i], degradations[i], sched, classes[i], g, batch_size=3),
                      g.get_state()))
    renders, views = [], []
    forward, d_forward = type(tiny_prior.G).forward, type(tiny_prior.D).forward
    monkeypatch.setattr(type(tiny_prior.G), "forward", lambda G, *a, **k: renders.append(1) or forward(G, *a, **k))
    monkeypatch.setattr(type(tiny_prior.D), "forward", lambda D, *a, **k: views.append(1) or d_forward(D, *a, **k))
    together = search_latents(tiny_prior, objectives, degradations, sched, classes, generators, batch_size=3)
    for (z, c), ((z_alone, c_alone), state) in zip(together, alone):
        assert torch.equal(z, z_alone) and c == c_alone
    for g, (_, state) in zip(generators[1:5], alone[1:5]):
        assert torch.equal(g.get_state(), state)  # moved on as its own search would have moved it
    assert torch.equal(one.get_state(), alone[5][1])
    # draws to score: {0, 1, 4}, {2}, {3}, {5} for 8 candidates in batches of 3, 3 and 2; with 0 candidates
    # nothing moves the generators, so {0, 1, 4, 5} and {2} score the 3 classes for z = 0 in one batch, and 3,
    # with a known class, has nothing to score
    assert len(renders) == (4 * 3 if n_candidates == 8 else 2)
    # through D: the two gray operators of 0 and 1 as one, 4's downsampling apart
    assert len(views) == (5 * 3 if n_candidates == 8 else 3)
    with pytest.raises(ValueError, match="one objective, degradation, class and generator per image"):
        search_latents(tiny_prior, objectives, degradations[:5], sched, classes, generators)
    if n_candidates == 8:
        assert len({tuple(z.flatten().tolist()) for z, _ in together}) > 1  # the draws do differ


def test_search_batches_are_few_even_and_within_the_pixel_budget() -> None:
    from dgp.reconstruct import CPU_SEARCH_BATCH_PIXELS, SEARCH_BATCH_PIXELS, _search_batch_size

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for n in (1, 2, 99, 128, 129, 200, 500, 1000):
        for resolution, device, pixels in ((32, cpu, CPU_SEARCH_BATCH_PIXELS), (128, cpu, CPU_SEARCH_BATCH_PIXELS),
                                           (32, gpu, SEARCH_BATCH_PIXELS), (256, gpu, SEARCH_BATCH_PIXELS)):
            size = _search_batch_size(n, resolution, device)
            cap = pixels // resolution**2
            assert 1 <= size <= max(cap, 1)
            batches = [min(size, n - start) for start in range(0, n, size)]
            assert len(batches) == -(-n // cap), (n, resolution, batches)  # as few as the budget allows
            assert max(batches) - min(batches) < len(batches), (n, resolution, batches)  # and about even
    assert _search_batch_size(200, 32, cpu) == 100  # two batches of 100, not 128 and 72
    assert _search_batch_size(5, 1024, cpu) == 1  # images larger than the budget: one at a time


# ------------------------------------------------------------------------------------ progressive tuning


@pytest.mark.parametrize("ft_num", [1, 3])
def test_groups_not_yet_opened_stay_bit_identical(tiny_prior: Prior, ft_num: int) -> None:
    _, target = prior_image(tiny_prior, 0, seed=1)
    sched = schedule(Stage(3, lr_G=1e-2, lr_z=1e-2, ft_num=ft_num, w_mse=1.0))
    tuned = DGPReconstructor(tiny_prior, sched)(target, Identity(), 0).generator(tiny_prior)
    num_groups = tiny_prior.G.num_groups  # linear, 3 blocks, output layer
    for i in range(num_groups):
        pairs = list(zip(group_tensors(tuned, i), group_tensors(tiny_prior.G, i)))
        identical = all(torch.equal(a, b) for a, b in pairs)
        assert identical == (i >= ft_num), f"group {i} of {num_groups} (ft_num={ft_num})"
    # The class embedding is not tuned unless the schedule says so.
    assert torch.equal(tuned.shared.weight, tiny_prior.G.shared.weight)


def test_first_adam_step_moves_each_group_by_its_learning_rate(tiny_prior: Prior) -> None:
    """With Adam's betas (0, 0.999) the first step is ``lr * g / (|g| + eps)``, i.e. ``lr`` per element with a
    gradient: the largest change of each group after one step reads back the learning rate it was given."""
    _, target = prior_image(tiny_prior, 0, seed=1)
    sched = schedule(Stage(1, lr_G=1e-3, lr_z=1e-2, ft_num=3, lr_ratio=0.5, w_mse=1.0))
    result = DGPReconstructor(tiny_prior, sched)(target, Identity(), 0)
    tuned = result.generator(tiny_prior)
    steps = [group_step(tuned, tiny_prior, i) for i in range(tiny_prior.G.num_groups)]
    assert steps == pytest.approx([1e-3, 5e-4, 2.5e-4, 0.0, 0.0], rel=1e-2, abs=0.0)
    assert float(result.z.abs().max()) == pytest.approx(1e-2, rel=1e-2)  # z started at 0


def test_output_layer_and_embedding_are_tuned_only_when_asked(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 0, seed=1)
    last = tiny_prior.G.num_groups - 1  # the output layer
    stage = Stage(1, lr_G=1e-3, lr_z=0.0, ft_num=None, lr_ratio=0.5, w_mse=1.0)
    plain = DGPReconstructor(tiny_prior, schedule(stage))(target, Identity(), 0).generator(tiny_prior)
    assert group_step(plain, tiny_prior, last) == 0.0
    assert torch.equal(plain.shared.weight, tiny_prior.G.shared.weight)
    sched = schedule(stage, tune_output_layer=True, update_embed=True)
    tuned = DGPReconstructor(tiny_prior, sched)(target, Identity(), 0).generator(tiny_prior)
    assert group_step(tuned, tiny_prior, last) == pytest.approx(1e-3 * 0.5**last, rel=1e-2)
    # update_embed puts the class embedding into group 0: only the used class's row moves, at group 0's rate.
    moved = (tuned.shared.weight - tiny_prior.G.shared.weight).detach().abs().amax(dim=1)
    assert float(moved[0]) == pytest.approx(1e-3, rel=1e-2) and moved[1:].eq(0).all()


def test_reconstruction_leaves_the_prior_untouched(tiny_prior: Prior) -> None:
    before = {f"{name}.{k}": v.clone() for name, net in (("G", tiny_prior.G), ("D", tiny_prior.D))
              for k, v in net.state_dict().items()}
    _, target = prior_image(tiny_prior, 1, seed=2)
    sched = schedule(Stage(2, 1e-2, 1e-2, ft_num=2, w_mse=1.0), Stage(2, 1e-2, 1e-2, use_in=True, w_mse=1.0),
                     update_embed=True, tune_output_layer=True, n_candidates=4)
    down2 = parse_degradation("down2")
    DGPReconstructor(tiny_prior, sched)(down2.observe(target), down2, None)
    after = {f"{name}.{k}": v for name, net in (("G", tiny_prior.G), ("D", tiny_prior.D))
             for k, v in net.state_dict().items()}
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert not tiny_prior.G.training and not tiny_prior.D.training
    nets = (tiny_prior.G, tiny_prior.D)
    assert all(p.grad is None and p.requires_grad for net in nets for p in net.parameters())


@pytest.mark.parametrize("use_in", [False, True])
def test_result_generator_renders_the_result(tiny_prior: Prior, use_in: bool) -> None:
    _, target = prior_image(tiny_prior, 2, seed=5)
    sched = schedule(Stage(3, 1e-2, 1e-2, w_mse=1.0), Stage(2, 1e-3, 1e-3, use_in=use_in, w_mse=1.0))
    result = DGPReconstructor(tiny_prior, sched)(target, Identity(), 2)
    assert result.use_in == use_in
    G = result.generator(tiny_prior)
    with torch.no_grad():
        embedding = G.shared(torch.tensor([2]))
        image = G(result.z, embedding, use_in=result.use_in)
    torch.testing.assert_close(image, result.image, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding, result.class_embedding)


def test_prior_made_target_is_recovered_to_high_psnr(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 2, seed=4, std=0.3)
    stages = (Stage(20, 5e-3, 5e-2, ft_num=2, w_D=0.02, w_mse=10.0),
              Stage(40, 2e-3, 1e-2, w_D=0.02, w_mse=10.0),
              Stage(30, 5e-4, 2e-3, w_D=0.02, w_mse=10.0))
    sched = schedule(*stages, n_candidates=16, sample_std=0.3, w_nll=0.02)
    start = DGPReconstructor(tiny_prior, dataclasses.replace(sched, stages=(Stage(0, 0.0, 0.0),)))
    before = float(psnr(start(target, Identity(), 2, torch.Generator().manual_seed(0)).image, target)[0])
    result = DGPReconstructor(tiny_prior, sched)(target, Identity(), 2, torch.Generator().manual_seed(0))
    after = float(psnr(result.image, target)[0])
    assert before < 25.0, "the best search candidate alone should be far from the target"
    assert after >= 30.0, f"PSNR {after:.2f} dB (search start {before:.2f} dB)"
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 10


@pytest.mark.parametrize("token", ["gray", "hole", "down4", "noise0.1"])
def test_restoration_is_closer_to_the_clean_image_than_the_observation(tiny_prior: Prior, token: str) -> None:
    _, clean = prior_image(tiny_prior, 1, seed=4, std=0.4)
    degradation = parse_degradation(token, size=SIZE)
    observation = degradation.observe(clean, generator=torch.Generator().manual_seed(5))
    stages = (Stage(20, 2e-3, 3e-2, ft_num=2, w_D=0.1, w_mse=10.0), Stage(20, 2e-3, 1e-2, w_D=0.1, w_mse=10.0))
    sched = schedule(*stages, n_candidates=16, sample_std=0.4, w_nll=0.02)
    restoration = restore(tiny_prior, degradation, sched, observation=observation, reference=clean, class_id=1)
    m = restoration.metrics
    assert m["psnr"] > m["observation_psnr"] + 1.0, m
    # The scores are those of the output and of the lifted observation, inside the hole where pixels are missing.
    hole = degradation.hole_mask(SIZE)
    assert (hole is not None) == (token == "hole")
    lifted = degradation.lift(observation, SIZE)
    assert m["psnr"] == pytest.approx(float(psnr(restoration.output, clean, mask=hole)[0]), abs=1e-4)
    assert m["observation_psnr"] == pytest.approx(float(psnr(lifted, clean, mask=hole)[0]), abs=1e-4)
    if token == "gray":  # colorization keeps the input's lightness (Lab L) and takes only colour from G
        lightness = rgb_to_lab(restoration.output)[:, 0]
        torch.testing.assert_close(lightness, rgb_to_lab(observation)[:, 0], atol=1e-2, rtol=0)
        assert not torch.allclose(rgb_to_lab(restoration.result.image)[:, 0], lightness, atol=0.5)


# -------------------------------------------------------------------------------- runs, callbacks, errors


def test_same_seed_same_result_and_seeds_matter(tiny_prior: Prior) -> None:
    _, clean = prior_image(tiny_prior, 0, seed=6)
    gray = parse_degradation("gray")
    observation = gray.observe(clean)
    sched = schedule(Stage(4, 1e-3, 1e-2, ft_num=2, w_mse=1.0), n_candidates=8, sample_std=0.5)

    def run(seed: int) -> Result:
        return DGPReconstructor(tiny_prior, sched)(observation, gray, None, torch.Generator().manual_seed(seed))

    a, b, other = run(3), run(3), run(4)
    assert torch.equal(a.image, b.image) and torch.equal(a.z, b.z) and a.class_id == b.class_id
    assert a.history == b.history
    assert all(torch.equal(a.generator_state[k], b.generator_state[k]) for k in a.generator_state)
    assert not torch.equal(a.z, other.z)


def test_callbacks_see_the_search_and_every_step(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 0, seed=1)
    events: list[StepEvent] = []
    sched = schedule(Stage(2, 1e-3, 1e-3, ft_num=1), Stage(3, 1e-3, 1e-3), n_candidates=5)
    result = DGPReconstructor(tiny_prior, sched, callbacks=[events.append])(target, Identity(), 0)
    search = [e for e in events if e.stage == -1]
    steps = [e for e in events if e.stage >= 0]
    assert search and search[-1].step == search[-1].total == 5 and search[-1].image is None
    assert [e.step for e in steps] == [1, 2, 3, 4, 5] and [e.stage for e in steps] == [0, 0, 1, 1, 1]
    assert all(e.total == 5 and e.num_stages == 2 and e.image.shape == (1, 3, 32, 32) for e in steps)
    assert len(result.history) == 5
    for event, logged in zip(steps, result.history):
        assert event.losses == pytest.approx(logged)
    assert set(result.timings) == {"search", "stage1", "stage2"}


def test_nan_loss_raises_a_clear_error(tiny_prior: Prior) -> None:
    _, target = prior_image(tiny_prior, 0, seed=1)
    sched = schedule(Stage(3, lr_G=1e30, lr_z=1e30, w_mse=1.0))
    with pytest.raises(ReconstructionError, match=r"loss became nan at stage 1, step \d+; lower the learning rates"):
        DGPReconstructor(tiny_prior, sched)(target, Identity(), 0)


def test_bad_observation_or_class_is_refused(tiny_prior: Prior) -> None:
    rec = DGPReconstructor(tiny_prior, schedule(Stage(1, 0.0, 0.0)))
    image = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"observation must be \(1, 3, h, w\)"):
        rec(image[0], Identity(), 0)
    with pytest.raises(ValueError, match=r"down4 on a \(32, 32\) prior observes \(8, 8\)"):
        rec(image, parse_degradation("down4"), 0)
    with pytest.raises(ValueError, match=r"class id 3 out of range 0..2"):
        rec(image, Identity(), 3)


# ------------------------------------------------------------------------------------------------ pipeline


def test_tasks_pick_their_presets() -> None:
    for task, (token, preset) in TASKS.items():
        assert preset_for(parse_degradation(token, size=SIZE)) == preset, task
    assert preset_for(parse_degradation("down2+gray+hole", size=SIZE)) == "inpainting"
    assert preset_for(parse_degradation("down2+gray", size=SIZE)) == "sr"
    assert is_colorization(parse_degradation("gray+id")) and not is_colorization(parse_degradation("gray+down2"))


def test_default_schedule_reads_the_prior_card(tiny_prior: Prior) -> None:
    prior = dataclasses.replace(tiny_prior, card={"presets": {"iterations_scale": 0.01, "n_candidates": 4}})
    sched = default_schedule(prior, "colorization")
    assert [s.iterations for s in sched.stages] == [2, 2, 3, 4, 3] and sched.n_candidates == 4
    sched = default_schedule(prior, "colorization", iterations_scale=0.02, candidates=0)
    assert [s.iterations for s in sched.stages] == [4, 4, 6, 8, 6] and sched.n_candidates == 0
    assert default_schedule(tiny_prior, "sr") == get_preset("sr")  # no presets in the card: the paper's
    with pytest.raises(ValueError, match="candidates must be >= 0"):
        default_schedule(prior, "sr", candidates=-1)


def test_card_lr_scale_multiplies_only_generator_learning_rates(tiny_prior: Prior) -> None:
    prior = dataclasses.replace(tiny_prior, card={"presets": {"lr_G_scale": 4.0}})
    base, scaled = get_preset("sr"), default_schedule(prior, "sr")
    assert [s.lr_G for s in scaled.stages] == pytest.approx([4.0 * s.lr_G for s in base.stages])
    assert [s.lr_z for s in scaled.stages] == [s.lr_z for s in base.stages]
    assert [s.iterations for s in scaled.stages] == [s.iterations for s in base.stages]
    with pytest.raises(ValueError, match="scales must be positive"):
        base.scaled(lr_G=0.0)
    per_preset = dataclasses.replace(tiny_prior, card={"presets": {"lr_G_scale": {"sr": 16.0}}})
    assert default_schedule(per_preset, "sr").stages[0].lr_G == pytest.approx(16.0 * base.stages[0].lr_G)
    assert default_schedule(per_preset, "colorization") == get_preset("colorization")
