"""Recorded forward passes (dgp.tracing) replay the eager computation exactly, and the engine uses them."""

from __future__ import annotations

import dataclasses
import threading
import warnings

import pytest
import torch

from torch.utils.flop_counter import FlopCounterMode

from dgp import tracing
from dgp.degradations import parse_degradation
from dgp.objective import Objective, feature_distance
from dgp.priors.layers import constant_network
from dgp.reconstruct import DGPReconstructor, StackedGenerators, TunedGenerator
from dgp.schedule import PRESETS


def _no_tracer(monkeypatch) -> None:
    """Every :class:`~dgp.tracing.Recorded` runs its function eagerly, as on a PyTorch without the tracer."""
    monkeypatch.setattr(tracing, "record", lambda *args, **kwargs: None)


def _gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    weights = torch.linspace(-1, 1, output.numel()).reshape(output.shape)  # every element counts differently
    return torch.autograd.grad((output * weights).sum(), inputs)


@pytest.mark.parametrize("kind", [TunedGenerator, StackedGenerators])
@pytest.mark.parametrize("update_embed", [False, True])
def test_recorded_generator_equals_eager_values_and_gradients(tiny_prior, monkeypatch, kind, update_embed):
    ids = torch.tensor([2]) if kind is TunedGenerator else torch.tensor([2, 0, 1])
    z = torch.randn(len(ids), tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(0), requires_grad=True)
    recorded = kind(tiny_prior.G, ids, update_embed, True)
    replayed = [recorded(z, False) for _ in range(2)]  # the first call records, both replay
    assert recorded._forward.recording is not None, "no recording was made: this PyTorch lacks the tracer"
    _no_tracer(monkeypatch)
    eager = kind(tiny_prior.G, ids, update_embed, True)  # the same initial weights
    expected = eager(z, False)
    assert all(torch.equal(x, expected) for x in replayed)
    params, eager_params = [p for g in recorded.groups for p in g], [p for g in eager.groups for p in g]
    for got, want in zip(_gradients(replayed[1], [z, *params]), _gradients(expected, [z, *eager_params])):
        assert torch.equal(got, want)


def test_groups_share_one_recording_and_replay_their_own_weights_and_classes(tiny_prior, monkeypatch):
    """Two groups of one batch, given the same :class:`~dgp.tracing.Recordings`: the second replays the
    first's recording, and gets exactly what its own eager pass gives, values and gradients."""
    z = torch.randn(2, tiny_prior.G.dim_z, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def groups(recordings):
        made = [StackedGenerators(tiny_prior.G, torch.tensor(ids), True, True, recordings)
                for ids in ([2, 0], [1, 1])]
        with torch.no_grad():  # the second group's weights differ from the first's, as after tuning
            for p in made[1].params.values():
                p.add_(torch.linspace(-0.01, 0.01, p.numel()).reshape(p.shape))
        return made

    recordings = tracing.Recordings()
    shared = groups(recordings)
    replayed = [group(z, False) for group in shared]
    assert shared[0]._forward.recording is not None, "no recording was made: this PyTorch lacks the tracer"
    assert shared[1]._forward.recording is shared[0]._forward.recording
    _no_tracer(monkeypatch)
    eager = groups(None)
    for got_group, want_group, got in zip(shared, eager, replayed):
        want = want_group(z, False)
        assert torch.equal(got, want)
        got_params = [p for g in got_group.groups for p in g]
        want_params = [p for g in want_group.groups for p in g]
        for a, b in zip(_gradients(got, [z, *got_params]), _gradients(want, [z, *want_params])):
            assert torch.equal(a, b)
    assert not torch.equal(replayed[0], replayed[1])


def test_recorded_discriminator_features_equal_eager(tiny_prior):
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1  # broadcast against any batch
    x = torch.rand(2, 3, 32, 32, generator=generator, requires_grad=True)
    with constant_network(tiny_prior.D):
        objective = Objective(tiny_prior.D, target)
        replayed = objective.features(x, objective.num_features)
        assert objective._constant_features.recording is not None
        expected = feature_distance(tiny_prior.D(x)[1], objective.target_features, objective.num_features)
        assert torch.equal(replayed, expected)
        assert torch.equal(*[torch.autograd.grad(v.sum(), x)[0] for v in (replayed, expected)])
        # another input shape is recorded anew; subsets share the objective's recordings
        part = objective.subset(0)
        assert part.features(x[:1], 2).shape == (1,)
        assert part._constant_features.recording is not objective._constant_features.recording
        assert part._constant_features.recording.shapes == [(1, 3, 32, 32)]
        assert objective.features(x[:1], 2).shape == (1,)
        assert objective._constant_features.recording is part._constant_features.recording
        assert objective.subset(0)._constant_features.recordings is objective._constant_features.recordings


def _switching_schedule():
    """Stages with instance norm off, on, off and on: the block state that a pass without instance norm sets
    in Python (``in_ready``, which makes the next pass with it match its affine anew) must come out the same
    when that pass is replayed (stage 3) instead of recorded (stage 1)."""
    base = PRESETS["colorization"].scaled(iterations=0.01, candidates=0.02)
    flags = [False, True, False, True]
    return dataclasses.replace(base, stages=tuple(dataclasses.replace(s, use_in=f)
                                                  for s, f in zip(base.stages, flags, strict=False)))


def _reconstruct(prior, schedule, batch: bool) -> list:
    """One image alone, or 4 in 2 groups of different classes (the second group replays the first's
    recordings of G and D)."""
    deg = parse_degradation("gray", size=(32, 32))
    observations = [deg.observe(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1)
                    for i in range(4)]
    rec = DGPReconstructor(prior, schedule)
    return rec.batch(observations, deg, [0, 1, 2, 1], shards=2) if batch else [rec(observations[0], deg, 0)]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("schedule", ["colorization", "switching instance norm"])
def test_reconstructions_are_bit_identical_with_and_without_recordings(tiny_prior, monkeypatch, batch,
                                                                        schedule):
    schedule = (PRESETS["colorization"].scaled(iterations=0.02, candidates=0.02) if schedule == "colorization"
                else _switching_schedule())
    recorded = _reconstruct(tiny_prior, schedule, batch)
    _no_tracer(monkeypatch)
    eager = _reconstruct(tiny_prior, schedule, batch)
    for a, b in zip(recorded, eager, strict=True):
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.z, b.z)
        assert all(torch.equal(a.generator_state[k], b.generator_state[k]) for k in a.generator_state)


def test_without_a_tracer_the_function_runs_eagerly(tiny_prior, monkeypatch):
    _no_tracer(monkeypatch)
    tuned = TunedGenerator(tiny_prior.G, torch.tensor([1]), False, False)
    assert tuned(torch.zeros(1, tiny_prior.G.dim_z), False).shape == (1, 3, 32, 32)
    assert tuned._forward.recording is None


def test_under_a_dispatch_mode_the_function_runs_eagerly(tiny_prior):
    """A FLOP counter (a Python dispatch mode) sees every operator of a reconstruction step, eagerly."""
    tuned = TunedGenerator(tiny_prior.G, torch.tensor([1]), False, False)
    z = torch.zeros(1, tiny_prior.G.dim_z, requires_grad=True)
    counts = []
    for _ in range(2):  # the first pass records outside the counter, the second replays it
        with FlopCounterMode(display=False) as counter:
            tuned(z, False).sum().backward()
        counts.append(counter.get_total_flops())
        tuned(z, False)
    assert counts[0] == counts[1] > 0
    assert tuned._forward.recording is not None


def test_recordings_are_freed_and_silent(tiny_prior):
    """Each recording lives in a compilation unit of its own (``torch.jit.trace`` would keep every one in
    the process's shared unit for good), and the tracer's warnings stay inside the recording."""
    shared_unit = torch.jit._state._python_cu
    before = len(shared_unit.get_functions())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            tuned = StackedGenerators(tiny_prior.G, torch.tensor([0, 1]), False, False)
            tuned(torch.zeros(2, tiny_prior.G.dim_z), False)
            assert tuned._forward.recording is not None
    assert len(shared_unit.get_functions()) == before


def test_recorded_function_replays_new_values_and_records_new_shapes():
    def fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0 + y, (x * y).sum().reshape(1)

    x, y = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.5, 0.25, 0.125])
    recording = tracing.record(fn, [torch.ones(3), torch.zeros(3)])
    assert recording is not None
    assert all(torch.equal(a, b) for a, b in zip(recording(x, y), fn(x, y), strict=True))
    assert recording.matches([x, y]) and not recording.matches([x[:2], y[:2]])
    recorded = tracing.Recorded(fn, "test")
    assert all(torch.equal(a, b) for a, b in zip(recorded(x, y), fn(x, y), strict=True))  # as recorded
    first = recorded.recording
    assert torch.equal(recorded(x[:2], y[:2])[0], fn(x[:2], y[:2])[0])
    assert recorded.recording is not first and recorded.recording.shapes == [(2,), (2,)]
    assert all(torch.equal(a, b) for a, b in zip(recorded(y, x), fn(y, x), strict=True))  # replayed
    assert recorded.recording is first


def test_a_caller_runs_eagerly_while_another_thread_records():
    """While one thread records, a caller in another runs the function eagerly (the same values), its operators
    stay out of the recording, and later calls replay the one recording."""
    recording_started, other_done = threading.Event(), threading.Event()

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x * 3.0
        if not recording_started.is_set():  # the first call (the recording): let the other thread run now
            recording_started.set()
            assert other_done.wait(10.0)
        return y + 1.0

    recordings = tracing.Recordings()
    x = torch.arange(4.0)
    found: dict[str, object] = {}

    def other() -> None:
        assert recording_started.wait(10.0)
        found["recording"], found["result"] = recordings.run(lambda t: torch.sin(t) * 3.0 + 1.0, [x], "other")
        other_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    recording, result = recordings.run(fn, [x], "test")
    thread.join()
    assert found["recording"] is None and torch.equal(found["result"], torch.sin(x) * 3.0 + 1.0)
    assert recording is not None and "sin" not in str(recording._function.graph)
    assert torch.equal(result, x * 3.0 + 1.0)
    replayed, again = recordings.run(fn, [x + 1.0], "test")
    assert replayed is recording and torch.equal(again, (x + 1.0) * 3.0 + 1.0)
