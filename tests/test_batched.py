"""The lean, batched and reference reconstruction paths agree (issue: speed without changing results)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from dgp import reconstruct
from dgp.degradations import parse_degradation
from dgp.reconstruct import DGPReconstructor, ReconstructionError, StackedGenerators, TunedGenerator, shard_sizes
from dgp.reference import reference_reconstruct
from dgp.schedule import PRESETS


def _clean(prior, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        z = torch.randn(n, prior.G.dim_z, generator=g) * 0.5
        return prior.G(z, prior.G.shared(torch.arange(n) % prior.n_classes))


@pytest.mark.parametrize("fused_adam", [True, False])
@pytest.mark.parametrize("preset,chain", [("colorization", "gray"), ("sr-mse", "down4"),
                                          ("inpainting", "hole")])
def test_lean_path_equals_reference_loop(tiny_prior, preset, chain, fused_adam):
    schedule = PRESETS[preset].scaled(iterations=0.02, candidates=0.02)
    deg = parse_degradation(chain, size=(32, 32))
    clean = _clean(tiny_prior, 1)
    obs = deg.observe(clean)
    lean = DGPReconstructor(tiny_prior, schedule)(obs, deg, None, torch.Generator().manual_seed(3))
    image, z, class_id = reference_reconstruct(tiny_prior, schedule, obs, deg, None,
                                               torch.Generator().manual_seed(3), reference=clean,
                                               fused_adam=fused_adam)
    assert lean.class_id == class_id
    # With the same Adam kernel only float rounding may differ; the original per-tensor Adam rounds its
    # updates differently, and a few hundred steps of fine-tuning carry that to ~1e-5 in the image.
    tolerance = dict(rtol=1e-5, atol=1e-6) if fused_adam else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lean.z, z, **tolerance)
    torch.testing.assert_close(lean.image, image, **tolerance)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("preset,chain", [("colorization", "gray"), ("sr-mse", "down4"),
                                          ("inpainting", "boxes2")])
def test_batched_path_equals_one_at_a_time(tiny_prior, preset, chain, shards):
    """All 3 images stacked in one group, or in a group of 2 and a lone image on two threads."""
    schedule = PRESETS[preset].scaled(iterations=0.02, candidates=0.02)
    clean = _clean(tiny_prior, 3)
    # one degradation per image (random boxes differ per image), one generator per image
    degs = [parse_degradation(chain, size=(32, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    obs = [d.observe(clean[i:i + 1]) for i, d in enumerate(degs)]
    rec = DGPReconstructor(tiny_prior, schedule)
    singles = [rec(o, d, None, torch.Generator().manual_seed(i)) for i, (o, d) in enumerate(zip(obs, degs))]
    batch = rec.batch(obs, degs, None, [torch.Generator().manual_seed(i) for i in range(3)], shards=shards)
    for a, b in zip(singles, batch):
        assert a.class_id == b.class_id
        torch.testing.assert_close(b.image, a.image, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(b.z, a.z, rtol=1e-3, atol=1e-3)
        assert a.generator_state.keys() == b.generator_state.keys()
        assert len(a.history) == len(b.history) == schedule.total_iterations
    # images differ from each other: the copies are independent
    assert not torch.allclose(batch[0].image, batch[1].image)


def test_batched_leaves_prior_untouched(tiny_prior):
    before = {k: v.clone() for k, v in tiny_prior.G.state_dict().items()}
    schedule = PRESETS["inpainting"].scaled(iterations=0.01, candidates=0.01)
    deg = parse_degradation("hole", size=(32, 32))
    clean = _clean(tiny_prior, 2)
    DGPReconstructor(tiny_prior, schedule).batch([deg.observe(clean[:1]), deg.observe(clean[1:])], deg)
    for k, v in tiny_prior.G.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("update_embed,tune_output_layer", [(False, True), (True, False)])
def test_batched_shares_only_what_no_image_changes(tiny_prior, update_embed, tune_output_layer):
    """Untuned layers are shared across the batch, tuned ones are per image: each image's final generator
    state matches its one-at-a-time run, and untuned weights come back as the prior's."""
    schedule = dataclasses.replace(PRESETS["colorization"].scaled(iterations=0.02, candidates=0.02),
                                   update_embed=update_embed, tune_output_layer=tune_output_layer)
    deg = parse_degradation("gray", size=(32, 32))
    clean = _clean(tiny_prior, 2)
    obs = [deg.observe(clean[i:i + 1]) for i in range(2)]
    rec = DGPReconstructor(tiny_prior, schedule)
    singles = [rec(o, deg, None, torch.Generator().manual_seed(i)) for i, o in enumerate(obs)]
    batch = rec.batch(obs, deg, None, [torch.Generator().manual_seed(i) for i in range(2)])
    prior_state = tiny_prior.G.state_dict()
    for a, b in zip(singles, batch):
        torch.testing.assert_close(b.image, a.image, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(b.class_embedding, a.class_embedding, rtol=1e-3, atol=1e-3)
        for key, value in a.generator_state.items():
            torch.testing.assert_close(b.generator_state[key], value, rtol=1e-3, atol=1e-3, msg=key)
        assert torch.equal(b.generator_state["shared.weight"], prior_state["shared.weight"]) != update_embed
        conv = "output_layer.2.weight"
        assert torch.equal(b.generator_state[conv], prior_state[conv]) != tune_output_layer


@pytest.mark.parametrize("kind", [TunedGenerator, StackedGenerators])
@pytest.mark.parametrize("update_embed,tune_output_layer", [(False, False), (True, True)])
def test_tuned_copies_make_untuned_parameters_constants(tiny_prior, kind, update_embed, tune_output_layer):
    """What no stage tunes gets no gradient in the copy (and a spectral norm computed once); the prior keeps
    its flags; everything in an optimizer group, open or closed, still gets its gradient."""
    tuned = kind(tiny_prior.G, torch.zeros(2, dtype=torch.long), update_embed, tune_output_layer)
    in_groups = {id(p) for g in tuned.groups for p in g}
    z = torch.randn(2, tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(0))
    tuned(z, False).square().sum().backward()
    assert all(p.grad is not None for g in tuned.groups for p in g)
    conv = tuned.G.output_layer[2]
    assert (conv.frozen_weight is None) == tune_output_layer
    assert tuned.G.shared.weight.requires_grad == update_embed
    if kind is TunedGenerator:
        assert all(p.requires_grad == (id(p) in in_groups) for p in tuned.G.parameters())
        assert all(p.grad is None for p in tuned.G.parameters() if id(p) not in in_groups)
    assert all(p.requires_grad for p in tiny_prior.G.parameters())
    assert all(getattr(m, "frozen_weight", None) is None for m in tiny_prior.G.modules())


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_step_with_the_gradient_as_first_moment_is_exact(beta1):
    """The engine's Adam step (the first moment pointed at the gradient where beta1 is 0) gives the same bits
    as Adam's own over several steps; with beta1 != 0 it leaves the state alone."""
    g = torch.Generator().manual_seed(5)
    start = [torch.randn(7, 5, 3, generator=g), torch.randn(11, generator=g)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]
    finals = []
    for step in (lambda opt: opt.step(), reconstruct._adam_step):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = torch.optim.Adam([{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 3e-3}],
                               betas=(beta1, 0.999), eps=1e-8, fused=True)
        for step_grads in grads:
            opt.zero_grad(set_to_none=True)
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            step(opt)
        shared = [opt.state[p]["exp_avg"] is p.grad for p in params]
        assert all(shared) if beta1 == 0.0 and step is reconstruct._adam_step else not any(shared)
        finals.append([p.detach() for p in params] + [opt.state[p]["exp_avg_sq"] for p in params])
    for a, b in zip(*finals):
        assert torch.equal(a, b)


def test_shard_sizes_cover_the_batch_evenly():
    assert shard_sizes(16, 2) == [8, 8]
    assert shard_sizes(5, 2) == [3, 2]
    assert shard_sizes(2, 8) == [1, 1]
    assert shard_sizes(3, 1) == [3]
    assert shard_sizes(4, 0) == [4]


def test_one_image_per_shard_is_the_single_image_path(tiny_prior):
    """Lone images in their own threads run the lean path: the numbers of one at a time with the same
    number of intra-op threads (one each; the thread count changes the order of parallel sums), to within
    the rounding of the targets' features, computed as one batch (1e-5 where stacked copies need 1e-3)."""
    schedule = PRESETS["colorization"].scaled(iterations=0.02, candidates=0.02)
    deg = parse_degradation("gray", size=(32, 32))
    clean = _clean(tiny_prior, 2)
    obs = [deg.observe(clean[i:i + 1]) for i in range(2)]
    rec = DGPReconstructor(tiny_prior, schedule)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        singles = [rec(o, deg, None, torch.Generator().manual_seed(i)) for i, o in enumerate(obs)]
    finally:
        torch.set_num_threads(threads)
    batch = rec.batch(obs, deg, None, [torch.Generator().manual_seed(i) for i in range(2)],
                      shards=max(2, threads))
    assert torch.get_num_threads() == threads
    for a, b in zip(singles, batch):  # the targets' features, computed as one batch, round differently
        torch.testing.assert_close(b.image, a.image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.z, a.z, rtol=1e-5, atol=1e-5)


def _no_shard_threads() -> bool:
    return not any(t.name.startswith("dgp-shard-") for t in threading.enumerate())


def _record_endings(monkeypatch) -> dict[str, str]:
    """Thread name -> how its group's ``run_stages`` ended (``"done"`` or the exception's class name)."""
    endings: dict[str, str] = {}
    run_stages = reconstruct.run_stages

    def recording(*args, **kwargs):
        try:
            result = run_stages(*args, **kwargs)
        except BaseException as exc:
            endings[threading.current_thread().name] = type(exc).__name__
            raise
        endings[threading.current_thread().name] = "done"
        return result

    monkeypatch.setattr(reconstruct, "run_stages", recording)
    return endings


def test_a_failing_shard_fails_the_batch_and_stops_the_others(tiny_prior, monkeypatch):
    """A NaN loss in the second thread's image raises the reconstruction error; the first thread, which
    could have gone on, stops at its next step, and the thread count is restored."""
    schedule = PRESETS["colorization"].scaled(iterations=0.05, candidates=0.0)
    deg = parse_degradation("gray", size=(32, 32))
    clean = _clean(tiny_prior, 3)
    obs = [deg.observe(clean[i:i + 1]) for i in range(3)]
    obs[2] = torch.full_like(obs[2], float("nan"))
    steps = []
    rec = DGPReconstructor(tiny_prior, schedule, callbacks=[steps.append])
    threads = torch.get_num_threads()
    endings = _record_endings(monkeypatch)
    with pytest.raises(ReconstructionError, match="the loss became nan"):
        rec.batch(obs, deg, [0, 1, 2], shards=2)
    assert torch.get_num_threads() == threads
    assert _no_shard_threads()
    assert len(steps) < schedule.total_iterations
    assert endings == {threading.current_thread().name: "_Stopped", "dgp-shard-1": "ReconstructionError"}


def test_a_failing_callback_stops_every_shard(tiny_prior, monkeypatch):
    schedule = PRESETS["colorization"].scaled(iterations=0.05, candidates=0.0)
    deg = parse_degradation("gray", size=(32, 32))
    clean = _clean(tiny_prior, 4)

    def cancel(event):
        if event.step == 3:
            raise KeyboardInterrupt

    rec = DGPReconstructor(tiny_prior, schedule, callbacks=[cancel])
    threads = torch.get_num_threads()
    endings = _record_endings(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        rec.batch([deg.observe(clean[i:i + 1]) for i in range(4)], deg, [0] * 4, shards=2)
    assert torch.get_num_threads() == threads
    assert _no_shard_threads()
    assert endings == {threading.current_thread().name: "KeyboardInterrupt", "dgp-shard-1": "_Stopped"}


def test_shards_must_be_positive(tiny_prior):
    deg = parse_degradation("gray", size=(32, 32))
    obs = deg.observe(_clean(tiny_prior, 1))
    with pytest.raises(ValueError, match="shards must be at least 1"):
        DGPReconstructor(tiny_prior, PRESETS["colorization"]).batch([obs], deg, shards=0)
