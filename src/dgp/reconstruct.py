"""The progressive DGP reconstructor: latent search, then stage-by-stage tuning of z and G.

Data flow: observation + degradation -> target (lifted to full size) -> latent search -> stages -> result.
The prior is never modified: each reconstruction tunes its own copy of the generator.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dgp.degradations import Degradation
from dgp.objective import Objective, feature_distance
from dgp.priors.biggan import Generator
from dgp.priors.layers import FrozenInstanceNorm, SpectralNorm, constant_network
from dgp.priors.registry import Prior
from dgp.priors.stacked import StackedLayout, stacked_generator_forward
from dgp.schedule import Schedule
from dgp.tracing import Recorded, Recordings


class ReconstructionError(RuntimeError):
    """A reconstruction that cannot go on (for example a loss that became NaN)."""


class _Stopped(Exception):
    """Ends a shard of a batch early because another shard of the same batch failed."""


@dataclass
class StepEvent:
    """What callbacks receive after every optimisation step.

    Attributes:
        stage: stage index (0-based); ``-1`` during the latent search.
        num_stages: number of stages.
        step: steps done so far over all stages (candidates scored, during the search).
        total: total steps of the schedule (candidates, during the search).
        losses: loss terms of this step (empty during the search).
        image: generator output of this step ``(1, 3, R, R)`` in [-1, 1], detached (``None`` in the search).
    """

    stage: int
    num_stages: int
    step: int
    total: int
    losses: dict[str, float]
    image: Tensor | None


Callback = Callable[[StepEvent], None]


@dataclass
class Result:
    """Everything a reconstruction produced.

    Attributes:
        image: restored image ``(1, 3, R, R)`` in [-1, 1]: the tuned generator's output.
        observation: the observation as given (observation space, e.g. small for super-resolution).
        target: the observation lifted to full size ``(1, 3, R, R)``, what the loss compared against.
        z: tuned latent ``(1, dim_z)``.
        class_id: class used (given, or chosen by the latent search).
        class_embedding: class embedding after tuning ``(1, shared_dim)``.
        generator_state: the tuned generator's state dict (CPU tensors, original key names).
        use_in: whether the last stage ran G with instance norm (needed to render from the state).
        history: one dict of loss terms per step.
        timings: seconds spent in the search and in each stage.
    """

    image: Tensor
    observation: Tensor
    target: Tensor
    z: Tensor
    class_id: int
    class_embedding: Tensor
    generator_state: dict[str, Tensor]
    use_in: bool
    history: list[dict[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def generator(self, prior: Prior) -> Generator:
        """A copy of ``prior.G`` with this result's tuned weights, ready to render (eval mode)."""
        G = copy.deepcopy(prior.G)
        G.load_state_dict(self.generator_state)
        G.reset_instance_norm(ready=self.use_in)
        return G.eval()


def draw_candidates(n: int, dim_z: int, std: float, n_classes: int, class_id: int | None,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Latent-search candidates on the CPU: ``z`` ``(n, dim_z)`` ~ N(0, std^2) and classes ``(n,)``."""
    z = torch.randn(n, dim_z, generator=generator) * std
    if class_id is None:
        y = torch.randint(0, n_classes, (n,), generator=generator)
    else:
        y = torch.full((n,), class_id, dtype=torch.long)
    return z, y


# Candidates scored at once: at most this many output pixels, in as few batches as that allows, of one size (the
# last one smaller or equal). On a CPU 2^17, 128 candidates at 32 px and 8 at 128 px: a search of 200 candidates
# with the shipped prior took 364 ms in two batches of 100 against 408 ms in one of 200 (2 threads; 712 against
# 808 ms on one; medians of 5 alternating rounds), presumably as a smaller batch's activations stay in the
# caches; at 128 px batches of 4, 8 and 16 candidates took the same time. Elsewhere (a GPU, not measured) 2^18.
CPU_SEARCH_BATCH_PIXELS = 2**17
SEARCH_BATCH_PIXELS = 2**18


def _search_batch_size(n: int, resolution: int, device: torch.device) -> int:
    """Candidates per batch for scoring ``n`` candidates at ``resolution`` on ``device``: the fewest batches
    within the pixel budget, their size as even as one size for all allows (200 at 32 px on a CPU: 2 x 100)."""
    pixels = CPU_SEARCH_BATCH_PIXELS if device.type == "cpu" else SEARCH_BATCH_PIXELS
    return max(1, math.ceil(n / math.ceil(max(n, 1) / max(1, pixels // resolution**2))))


def _same_operator(a: Degradation, b: Degradation) -> bool:
    """Whether two degradations compute the same function: one object, or modules of the same types with equal
    buffers and equal public attributes, all of them plain values (a random mask drawn twice from one seed, say).
    An attribute of any other kind (a tensor that is not a buffer, a function) makes them count as different."""
    if a is b:
        return True
    plain = (bool, int, float, str, tuple, type(None))

    def settings(m: torch.nn.Module) -> dict[str, object] | None:
        public = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        return public if all(isinstance(v, plain) for v in public.values()) else None

    modules_a, modules_b = list(a.modules()), list(b.modules())
    if len(modules_a) != len(modules_b) or any(type(x) is not type(y) or settings(x) is None
                                               or settings(x) != settings(y) for x, y in zip(modules_a, modules_b)):
        return False
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@dataclass
class _Candidates:
    """One draw of latent-search candidates and the images that drew it: ``z`` ``(n, dim_z)`` and classes
    ``y`` ``(n,)`` to score (none when the class is known and there is a single z), the generator state the
    draw left behind."""

    z: Tensor
    y: Tensor | None
    class_id: int | None
    state: Tensor
    images: list[int]


def _draw(prior: Prior, schedule: Schedule, class_id: int | None, generator: torch.Generator,
          image: int) -> _Candidates:
    """Image ``image``'s candidates, drawn from ``generator`` as :func:`search_latents` describes."""
    n, dim_z = schedule.n_candidates, prior.G.dim_z
    if n > 1:
        z, y = draw_candidates(n, dim_z, schedule.sample_std, prior.n_classes, class_id, generator)
    else:
        z = torch.zeros(1, dim_z) if n == 0 else torch.randn(1, dim_z, generator=generator)
        y = None
        if class_id is None:  # every class is scored with this z
            z, y = z.expand(prior.n_classes, -1), torch.arange(prior.n_classes)
    return _Candidates(z, y, class_id, generator.get_state(), [image])


@torch.no_grad()
def search_latents(prior: Prior, objectives: Sequence[Objective], degradations: Sequence[Degradation],
                   schedule: Schedule, class_ids: Sequence[int | None], generators: Sequence[torch.Generator],
                   batch_size: int | None = None, callback: Callback | None = None) -> list[tuple[Tensor, int]]:
    """Pick each image's starting latent (and class when unknown) by discriminator-feature distance.

    Image ``i`` draws its candidates from ``generators[i]`` (in the order of the images, so that a generator
    given twice draws on) and is scored against ``objectives[i]``'s target through ``degradations[i]``. With 0
    candidates z = 0, with 1 a single draw from N(0, 1), as in the released code; when the class is unknown in
    those cases, every class is scored with that z and the best kept. An image whose generator is in the state
    of an earlier image's before its draw, with the same class or both unknown, would draw the same candidates:
    it shares that draw (its generator is moved on as the draw would have moved it), the candidates are
    rendered once, and seen through D once for each distinct degradation among the images that share them.
    The picks are those of searching each image alone. ``callback`` hears of the first image's candidates.

    Returns ``(z (1, dim_z) on the prior's device, class id)`` per image.
    """
    if not len(objectives) == len(degradations) == len(class_ids) == len(generators):
        raise ValueError("search_latents needs one objective, degradation, class and generator per image")
    G = prior.G
    device = next(G.parameters()).device
    size = (prior.resolution, prior.resolution)
    draws: dict[tuple[int | None, bytes], _Candidates] = {}
    for i, (generator, class_id) in enumerate(zip(generators, class_ids)):
        key = (class_id, generator.get_state().numpy().tobytes())
        if key in draws:
            draws[key].images.append(i)
            generator.set_state(draws[key].state)
        else:
            draws[key] = _draw(prior, schedule, class_id, generator, i)
    starts: dict[int, tuple[Tensor, int]] = {}
    for draw in draws.values():
        if draw.y is None:  # a known class and a single z: nothing to score
            starts.update({i: (draw.z.to(device), int(draw.class_id)) for i in draw.images})
            continue
        views: list[tuple[Degradation, list[int]]] = []  # each distinct degradation, with the images it serves
        for i in draw.images:
            view = next((v for v in views if _same_operator(v[0], degradations[i])), None)
            if view is None:
                views.append((degradations[i], [i]))
            else:
                view[1].append(i)
        n = len(draw.z)
        step = batch_size or _search_batch_size(n, prior.resolution, device)
        losses: dict[int, list[Tensor]] = {i: [] for i in draw.images}
        for start in range(0, n, step):
            x = G(draw.z[start:start + step].to(device), G.shared(draw.y[start:start + step].to(device)))
            for degradation, images in views:
                features = objectives[images[0]].D(degradation.lift(degradation(x), size))[1]
                for i in images:
                    count = min(schedule.search_features, objectives[i].num_features)
                    losses[i].append(feature_distance(features, objectives[i].target_features, count).cpu())
            if callback is not None and draw.images[0] == 0 and schedule.n_candidates > 1:
                callback(StepEvent(-1, len(schedule.stages), min(start + step, n), n, {}, None))
        for i in draw.images:
            best = int(torch.cat(losses[i]).argmin())
            starts[i] = (draw.z[best:best + 1].to(device), int(draw.y[best]))
    return [starts[i] for i in range(len(generators))]


def search_latent(prior: Prior, objective: Objective, degradation: Degradation, schedule: Schedule,
                  class_id: int | None, generator: torch.Generator, batch_size: int | None = None,
                  callback: Callback | None = None) -> tuple[Tensor, int]:
    """:func:`search_latents` for one image: ``(z (1, dim_z) on the prior's device, class id)``."""
    return search_latents(prior, [objective], [degradation], schedule, [class_id], [generator], batch_size,
                          callback)[0]


def freeze_untuned(G: Generator, tuned: set[int]) -> None:
    """Make the parameters of ``G`` whose ids are not in ``tuned`` constants: no gradient, and for spectral-norm
    layers with no tuned weight, the normalised weight computed once (``G`` is a private copy, in eval mode)."""
    for p in G.parameters():
        if id(p) not in tuned:
            p.requires_grad_(False)
    with torch.no_grad():
        for layer in G.modules():
            if isinstance(layer, SpectralNorm) and id(layer.weight) not in tuned:
                layer.frozen_weight = layer.normalized_weight().detach()


class TunedGenerator:
    """One tuned copy of the prior's generator for one image (the lean single-image path).

    Parameters that no stage tunes (the output layer unless the schedule tunes it, the class embedding unless
    it is updated) are constants of the copy: no gradient is computed for them. Passes without instance norm
    are replayed from a recording of the first (:mod:`dgp.tracing`): the same operators, without Python.
    """

    def __init__(self, G: Generator, class_ids: Tensor, update_embed: bool, tune_output_layer: bool) -> None:
        self.G = copy.deepcopy(G).eval()
        self.G.reset_instance_norm()
        self.class_ids = class_ids
        groups = self.G.param_groups(with_embedding=update_embed)
        self.groups = groups if tune_output_layer else groups[:-1]
        self._tuned = [p for g in self.groups for p in g]
        freeze_untuned(self.G, {id(p) for p in self._tuned})
        G = self.G
        # the tuned parameters are passed to the recording (dgp.tracing) as inputs: G reads these very tensors,
        # so they are recorded as inputs, not as constants
        self._forward = Recorded(lambda z, *_: G(z, G.shared(class_ids)), "tuned generator")

    def __call__(self, z: Tensor, use_in: bool) -> Tensor:
        if use_in:  # instance norm sets its affine on its first pass: state that a recording cannot replay
            return self.G(z, self.G.shared(self.class_ids), use_in=True)
        self.G.reset_instance_norm()  # what a pass without instance norm does to the blocks' state, in Python
        return self._forward(z, *self._tuned)

    def embeddings(self) -> Tensor:
        return self.G.shared(self.class_ids)

    def states(self) -> list[dict[str, Tensor]]:
        return [{k: v.detach().cpu().clone() for k, v in self.G.state_dict().items()}]


class StackedGenerators:
    """B independent tuned copies of the generator, run as one batch (:func:`stacked_generator_forward`).

    Every tuned parameter and every per-image buffer (the instance-norm affine, matched per image) is stacked
    along a new first dimension; image ``i`` uses slice ``i`` only, so its gradients, Adam updates and
    instance-norm statistics are its own, as in the single-image path. Convolutions with per-image weights
    run as grouped convolutions (the 32-px-and-up transposed ones per image). What no image can change
    (untuned parameters such as the output layer, and the constant buffers of spectral and batch norm in eval
    mode) is kept once and shared, so that those layers run as ordinary batched layers. Passes without
    instance norm are replayed from a recording of the first (:mod:`dgp.tracing`), which frees groups that
    run side by side in threads of one process from taking turns at Python's global interpreter lock.
    Groups of one batch (copies of one generator, tuned by one schedule) can share their recordings: given
    the same ``recordings``, the first group of each size records and the others replay that recording with
    their own tensors and classes (its constants, the untuned tensors of the first group's copy, are equal to
    theirs), after running their passes eagerly while it is being made.
    """

    def __init__(self, G: Generator, class_ids: Tensor, update_embed: bool, tune_output_layer: bool,
                 recordings: Recordings | None = None) -> None:
        self.G = copy.deepcopy(G).eval()
        self.G.reset_instance_norm()
        self.class_ids = class_ids
        b = len(class_ids)
        names = {id(p): n for n, p in self.G.named_parameters()}
        groups = [[names[id(p)] for p in g] for g in self.G.param_groups(with_embedding=update_embed)]
        groups = groups if tune_output_layer else groups[:-1]
        tuned = {n for g in groups for n in g}
        per_image = {f"{m_name}.{b_name}" for m_name, m in self.G.named_modules()
                     if isinstance(m, FrozenInstanceNorm) for b_name, _ in m.named_buffers(recurse=False)}

        def stack(t: Tensor, grad: bool) -> Tensor:
            return t.detach().unsqueeze(0).repeat(b, *([1] * t.dim())).requires_grad_(grad)  # repeat copies

        freeze_untuned(self.G, {id(p) for n, p in self.G.named_parameters() if n in tuned})
        self.params = {n: stack(p, True) for n, p in self.G.named_parameters() if n in tuned}
        self.buffers = {n: stack(t, False) for n, t in self.G.named_buffers() if n in per_image}
        self.fixed = {n: p.detach() for n, p in self.G.named_parameters() if n not in tuned}
        self.fixed.update({n: t for n, t in self.G.named_buffers() if n not in per_image})
        self.groups = [[self.params[n] for n in g] for g in groups]
        self.stacked = {**self.params, **self.buffers}
        self.layout = StackedLayout(self.G, self.stacked, b)

        layout, keys = self.layout, list(self.stacked)
        self._forward = Recorded(  # replayed from a recording (dgp.tracing)
            lambda z, ids, *values: stacked_generator_forward(layout, dict(zip(keys, values)), z, ids),
            "stacked generators", recordings)

    def __call__(self, z: Tensor, use_in: bool) -> Tensor:
        if use_in:  # instance norm sets its affine on its first pass: state that a recording cannot replay
            return stacked_generator_forward(self.layout, self.stacked, z, self.class_ids, use_in=True)
        self.G.reset_instance_norm()  # what a pass without instance norm does to the blocks' state, in Python
        return self._forward(z, self.class_ids, *self.stacked.values())

    def embeddings(self) -> Tensor:
        w = self.params.get("shared.weight")
        if w is None:
            return self.fixed["shared.weight"][self.class_ids]
        return w[torch.arange(len(self.class_ids), device=w.device), self.class_ids]

    def states(self) -> list[dict[str, Tensor]]:
        order = list(self.G.state_dict().keys())
        stacked = self.stacked
        return [{k: (stacked[k][i] if k in stacked else self.fixed[k]).detach().cpu().clone() for k in order}
                for i in range(len(self.class_ids))]


def _adam(groups: list[dict]) -> torch.optim.Adam:
    """Adam as DGP sets it (betas (0, 0.999), learning rates set per stage), with the fused kernel: one call
    per step instead of a dozen small operators per tensor (about 10% of a 32-pixel step on a CPU)."""
    return torch.optim.Adam(groups, lr=0.0, betas=(0.0, 0.999), eps=1e-8, fused=True)


def _adam_step(opt: torch.optim.Adam) -> None:
    """``opt.step()``, with each first moment the gradient itself where beta1 is 0.

    With beta1 = 0 Adam's new first moment ``beta1 * m + (1 - beta1) * g`` is ``g`` exactly, whatever ``m``
    holds, so the state's copy of it is pure memory traffic: pointed at the gradient, the fused kernel reads
    and writes one tensor fewer (one parameter-sized stream of seven) and gives the same bits as Adam's own
    step (tested). The kernel alone, on 32 images' generators (12.7M parameters, one thread): 14.2 against 18.0
    ms. The state is made by Adam itself on its first step; from then on it is pointed at each step's gradient."""
    for group in opt.param_groups:
        if group["betas"][0] != 0.0:
            continue
        for p in group["params"]:
            state = opt.state.get(p)
            if state and p.grad is not None:
                state["exp_avg"] = p.grad
    opt.step()


def run_stages(tuned: TunedGenerator | StackedGenerators, z: Tensor, objective: Objective,
               degrade: Callable[[Tensor], Tensor], schedule: Schedule,
               emit: Callable[[StepEvent], None] | None,
               stop: threading.Event | None = None) -> tuple[list[list[dict[str, float]]], dict[str, float]]:
    """Optimise ``z`` ``(B, dim_z)`` (a leaf) and the tuned generators through the schedule's stages.

    ``degrade`` maps generator output ``(B, 3, R, R)`` to the degraded space at full size. Loss values are
    read back once per stage (one host round trip), or every step when ``emit`` is given. When ``stop`` is
    set (by another shard of the same batch, which failed), the next step raises instead of running.

    Returns per-image loss histories and per-stage wall times.
    """
    opt_G = _adam([{"params": g} for g in tuned.groups])
    opt_z = _adam([{"params": [z]}])
    batch = z.shape[0]
    histories: list[list[dict[str, float]]] = [[] for _ in range(batch)]
    timings: dict[str, float] = {}
    step, total = 0, schedule.total_iterations
    for index, stage in enumerate(schedule.stages):
        t_stage = time.perf_counter()
        for group, lr in zip(opt_G.param_groups, stage.group_lrs(len(tuned.groups))):
            group["lr"] = lr
        opt_z.param_groups[0]["lr"] = stage.lr_z
        count = stage.feature_count(objective.num_features)
        records: list[Tensor] = []
        for _ in range(stage.iterations):
            if stop is not None and stop.is_set():
                raise _Stopped
            opt_G.zero_grad(set_to_none=True)
            opt_z.zero_grad(set_to_none=True)
            x = tuned(z, stage.use_in)
            terms = objective(degrade(x), z, count, stage.w_D, stage.w_mse, schedule.w_nll)
            terms.total.sum().backward()
            _adam_step(opt_z)
            _adam_step(opt_G)
            step += 1
            records.append(torch.stack([terms.total, terms.features, terms.mse / 4.0, terms.nll], 1).detach())
            if emit is not None:
                emit(StepEvent(index, len(schedule.stages), step, total, terms.as_floats(), x[:1].detach()))
        if records:
            values = torch.stack(records).cpu()  # (iterations, B, 4)
            bad = (~torch.isfinite(values[..., 0])).nonzero()
            if len(bad):
                at = step - stage.iterations + int(bad[0, 0]) + 1
                raise ReconstructionError(f"the loss became {float(values[bad[0, 0], bad[0, 1], 0])} at stage "
                                          f"{index + 1}, step {at}; lower the learning rates or check the input")
            for i in range(batch):
                histories[i] += [dict(zip(LOSS_NAMES, row.tolist())) for row in values[:, i]]
        timings[f"stage{index + 1}"] = time.perf_counter() - t_stage
    return histories, timings


LOSS_NAMES = ("loss", "features", "mse", "nll")


def shard_sizes(batch: int, shards: int) -> list[int]:
    """Sizes of ``min(batch, shards)`` (at least one) consecutive runs of a batch, differing by at most one."""
    count = max(1, min(batch, shards))
    return [batch // count + (i < batch % count) for i in range(count)]


@dataclass
class _Shard:
    """Images ``start`` to ``stop - 1`` of a batch, tuned together (one thread's share of the batch)."""

    start: int
    stop: int
    tuned: TunedGenerator | StackedGenerators
    z: Tensor
    objective: Objective
    degrade: Callable[[Tensor], Tensor]
    histories: list[list[dict[str, float]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    images: Tensor = field(default_factory=lambda: torch.empty(0))
    embeddings: Tensor = field(default_factory=lambda: torch.empty(0))
    states: list[dict[str, Tensor]] = field(default_factory=list)

    def run(self, schedule: Schedule, emit: Callable[[StepEvent], None] | None,
            stop: threading.Event | None) -> None:
        """Tune the shard, then make its results (on the CPU): final images ``(n, 3, R, R)``, class embeddings
        ``(n, shared_dim)`` and generator states, here, in the shard's own thread."""
        self.histories, self.timings = run_stages(self.tuned, self.z, self.objective, self.degrade, schedule,
                                                  emit, stop)
        with torch.no_grad():
            self.images = self.tuned(self.z, schedule.stages[-1].use_in).detach().cpu()
            self.embeddings = self.tuned.embeddings().detach().cpu()
        self.states = self.tuned.states()


def _run_shards(shards: list[_Shard], schedule: Schedule, emit: Callable[[StepEvent], None] | None) -> None:
    """Run every shard's stages: the first in the calling thread (the only one that calls ``emit``), each other
    in a thread of its own, the caller's intra-op threads divided between them.

    A shard that fails stops the others at their next step; its error is raised once all have ended.
    """
    if len(shards) == 1:
        shards[0].run(schedule, emit, None)
        return
    previous = torch.get_num_threads()
    each = max(1, previous // len(shards))
    stop = threading.Event()
    errors: list[BaseException | None] = [None] * len(shards)

    def work(index: int) -> None:
        torch.set_num_threads(each)  # this thread's own setting
        try:
            shards[index].run(schedule, None, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors[index] = exc
            stop.set()

    workers = [threading.Thread(target=work, args=(i,), name=f"dgp-shard-{i}", daemon=True)
               for i in range(1, len(shards))]
    torch.set_num_threads(each)
    try:
        for worker in workers:
            worker.start()
        shards[0].run(schedule, emit, stop)
    except BaseException as exc:  # noqa: BLE001 - raised below, after the other shards have ended
        errors[0] = exc
        stop.set()
    finally:
        try:
            for worker in workers:
                worker.join()
        finally:
            stop.set()  # no effect once all have ended; ends them if the wait itself was interrupted
            torch.set_num_threads(previous)
    failures = [exc for exc in errors if exc is not None and not isinstance(exc, _Stopped)]
    if failures:
        raise failures[0]


def _check_observation(prior: Prior, observation: Tensor, degradation: Degradation, class_id: int | None) -> None:
    size = (prior.resolution, prior.resolution)
    if observation.dim() != 4 or observation.shape[:2] != (1, 3):
        raise ValueError(f"observation must be (1, 3, h, w), got {tuple(observation.shape)}")
    expected = tuple(degradation.observation_size(size))
    if tuple(observation.shape[-2:]) != expected:
        raise ValueError(f"observation is {tuple(observation.shape[-2:])} but {degradation.name} on a "
                         f"{size} prior observes {expected}")
    if class_id is not None and not 0 <= class_id < prior.n_classes:
        raise ValueError(f"class id {class_id} out of range 0..{prior.n_classes - 1}")


class DGPReconstructor:
    """Restores observations by progressive relaxed GAN inversion (DGP).

    Args:
        prior: the GAN prior (G and D); left unchanged.
        schedule: latent search and stages.
        callbacks: called after every step with a :class:`StepEvent` (of the first image in a batch).

    ``__call__`` restores one image; :meth:`batch` restores several at once, each with its own latent, class
    and tuned generator. Both run the same computation per image with the same random draws; the batched path
    rounds differently (grouped convolutions), which is invisible after a few steps but can grow over a long
    schedule, as any change of floating-point order does in this non-convex optimisation.
    """

    def __init__(self, prior: Prior, schedule: Schedule, callbacks: Sequence[Callback] = ()) -> None:
        self.prior = prior
        self.schedule = schedule
        self.callbacks = list(callbacks)

    def _emit(self, event: StepEvent) -> None:
        for cb in self.callbacks:
            cb(event)

    def __call__(self, observation: Tensor, degradation: Degradation, class_id: int | None = None,
                 generator: torch.Generator | None = None) -> Result:
        """Reconstruct one image.

        Args:
            observation: degraded image ``(1, 3, h, w)`` in [-1, 1], in the degradation's observation space
                (``h, w`` = ``degradation.observation_size((R, R))``).
            degradation: the operator that produced it.
            class_id: the class, or ``None`` to let the latent search choose one.
            generator: CPU random generator for the latent search (default: seeded with 0).
        """
        return self._run([observation], [degradation], [class_id], [generator], stacked=False)[0]

    def batch(self, observations: Sequence[Tensor], degradations: Degradation | Sequence[Degradation],
              class_ids: Sequence[int | None] | None = None,
              generators: Sequence[torch.Generator | None] | None = None,
              shards: int | None = None) -> list[Result]:
        """Reconstruct several images at once (arguments as for ``__call__``, one per image).

        The images are tuned in ``shards`` groups at once, each in a thread of its own with its share of the
        intra-op threads (``None``: one group per intra-op thread on a CPU, one group on other devices). On a
        CPU two groups of 8 run faster than 16 images in one, and a lone image takes the single-image path.
        Results do not depend on the grouping beyond float rounding. Images whose generators start in equal
        states (as by default: every one seeded with 0) and share a class, or all have none, draw the same latent
        search candidates, rendered once for all of them (:func:`search_latents`).
        """
        n = len(observations)
        degs = [degradations] * n if isinstance(degradations, torch.nn.Module) else list(degradations)
        ids = list(class_ids) if class_ids is not None else [None] * n
        gens = list(generators) if generators is not None else [None] * n
        if not n or not len(degs) == len(ids) == len(gens) == n:
            raise ValueError("batch needs at least one observation and one degradation, class and generator each")
        if shards is not None and shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        return self._run(list(observations), degs, ids, gens, stacked=True, shards=shards)

    def _run(self, observations: list[Tensor], degradations: list[Degradation], class_ids: list[int | None],
             generators: list[torch.Generator | None], stacked: bool, shards: int | None = 1) -> list[Result]:
        prior, schedule = self.prior, self.schedule
        size = (prior.resolution, prior.resolution)
        device = next(prior.G.parameters()).device
        for obs, deg, c in zip(observations, degradations, class_ids):
            _check_observation(prior, obs, deg, c)
        observations = [o.to(device) for o in observations]
        degradations = [d.to(device) for d in degradations]
        emit = self._emit if self.callbacks else None

        t0 = time.perf_counter()
        targets = torch.cat([d.lift(o, size) for o, d in zip(observations, degradations)])
        with constant_network(prior.D):
            objective = Objective(prior.D, targets)
            starts = search_latents(prior, [objective.subset(i) for i in range(len(observations))], degradations,
                                    schedule, class_ids,
                                    [g if g is not None else torch.Generator().manual_seed(0) for g in generators],
                                    callback=emit)
            search_time = time.perf_counter() - t0
            z_all = torch.cat([s[0] for s in starts])
            ids = torch.tensor([s[1] for s in starts], device=device)
            if shards is None:
                shards = torch.get_num_threads() if device.type == "cpu" else 1
            parts, start, recordings = [], 0, Recordings()
            for count in shard_sizes(len(observations), shards):
                end = start + count
                if stacked and count > 1:
                    tuned = StackedGenerators(prior.G, ids[start:end], schedule.update_embed,
                                              schedule.tune_output_layer, recordings)
                else:
                    tuned = TunedGenerator(prior.G, ids[start:end], schedule.update_embed, schedule.tune_output_layer)
                parts.append(_Shard(start, end, tuned,
                                    z_all[start:end].clone().requires_grad_(True), objective.subset(start, end),
                                    _degrade_function(degradations[start:end], size)))
                start = end
            _run_shards(parts, schedule, emit)
        last_in = schedule.stages[-1].use_in
        results = []
        for part in parts:
            for j, i in enumerate(range(part.start, part.stop)):
                results.append(Result(
                    image=part.images[j:j + 1], observation=observations[i].detach().cpu(),
                    target=targets[i:i + 1].detach().cpu(), z=part.z[j:j + 1].detach().cpu(), class_id=int(ids[i]),
                    class_embedding=part.embeddings[j:j + 1], generator_state=part.states[j], use_in=last_in,
                    history=part.histories[j], timings={"search": search_time, **part.timings}))
        return results


def _degrade_function(degradations: list[Degradation], size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """Generator output ``(B, 3, R, R)`` -> each image's degradation, lifted back to ``size``."""
    if len(degradations) == 1 or all(d is degradations[0] for d in degradations):
        only = degradations[0]
        return lambda x: only.lift(only(x), size)
    return lambda x: torch.cat([d.lift(d(x[i:i + 1]), size) for i, d in enumerate(degradations)])
