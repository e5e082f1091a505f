"""Where the time of one reconstruction goes: the latent search and each stage, then an operator breakdown.

Usage::

    .venv/bin/python benchmarks/profile_reconstruction.py [--prior cifar10] [--preset colorization]
        [--threads N] [--batch 16] [--large-group 32] [-o docs/profile.md]

Part 1 runs the whole preset (as ``dgp colorize`` does) on one image and reports the search and every stage:
iterations, seconds, ms per step and how many generator blocks are open. Part 2 profiles optimisation steps of
the lean single-image path and of the batched path (``--batch`` images at once) with ``torch.profiler`` and
sorts the operators' own CPU time into categories (convolution forward and backward, normalisation, Adam, ...).
The gap between the wall time of the profiled steps and the operators' time is Python and dispatch overhead.
Part 3 times a step of the batch against one image's and against one of its groups (the unit each thread runs)
alone, with per-image generators and through one shared generator: what the batch target asks and what bounds
any engine that tunes a generator per image; and the same group of an 8-channel model alone and side by side
with another in threads, which separates the cost of issuing operators in parallel from that of arithmetic.
Part 4 times and profiles one group of ``--large-group`` images alone on one thread (the unit of a large batch
on each core) against the conv peak of one thread: what the 40% throughput target asks, and how much of a
step the convolutions take.
Timings are for the given image content-independent: the observation is a random image.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from dgp.allocator import keep_freed_memory
from dgp.degradations import parse_degradation
from dgp.pipeline import TASKS, default_schedule
from dgp.priors.biggan import Discriminator, Generator
from dgp.priors.registry import Prior, load_prior
from dgp.objective import Objective
from dgp.priors.layers import constant_network
from dgp.reconstruct import DGPReconstructor, StackedGenerators, TunedGenerator, run_stages
from dgp.schedule import Schedule, Stage
from speed import conv_peak_gflops, cpu_name, flops_per_iteration  # this script's folder

# (category, substrings of aten operator names), first match wins; everything else is "other".
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolution backward", ("convolution_backward", "conv2d_backward")),
    ("convolution forward", ("convolution", "conv2d")),
    ("matrix multiply (linear, SN, attention)", ("addmm", "::mm", "bmm", "matmul", "linear", "::mv", "::dot")),
    ("normalisation (batch/instance norm)", ("batch_norm", "instance_norm", "var_mean", "::var", "::std",
                                             "rsqrt")),
    ("Adam update (fused or foreach kernels)", ("_foreach_", "_fused_adam")),
    ("resampling / pooling", ("upsample", "pool", "interpolate")),
    ("activations", ("relu", "threshold", "tanh")),
    ("elementwise arithmetic", ("::add", "::mul", "::sub", "::div", "::abs", "::sum", "::mean", "::pow",
                                "::sqrt", "::neg", "::sgn", "::sign", "::lerp", "::clamp", "::fill",
                                "::copy_", "::zero_")),
]


def categorise(name: str) -> str:
    for label, keys in CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other (views, indexing, autograd bookkeeping)"


def stage_table(prior: Prior, preset: str, seed: int) -> tuple[list[str], float]:
    """Run the full preset once and describe where its wall time went."""
    degradation_name, _ = next((d, p) for d, p in TASKS.values() if p == preset)
    size = (prior.resolution, prior.resolution)
    deg = parse_degradation(degradation_name, size=size)
    rng = torch.Generator().manual_seed(seed)
    obs = deg.observe(torch.rand(1, 3, *size, generator=rng) * 2 - 1)
    schedule = default_schedule(prior, preset)
    DGPReconstructor(prior, Schedule("warm-up", schedule.stages[:1], n_candidates=0)).__call__(obs, deg, 0)
    start = time.perf_counter()
    result = DGPReconstructor(prior, schedule)(obs, deg, None)
    wall = time.perf_counter() - start
    groups = len(prior.G.param_groups())
    lines = [f"| phase | iterations | open blocks | seconds | ms per step | share |", "| --- | --- | --- | --- | --- | --- |",
             f"| latent search | {schedule.n_candidates} candidates | - | {result.timings['search']:.2f} | "
             f"{1e3 * result.timings['search'] / max(1, schedule.n_candidates):.1f} per candidate | "
             f"{100 * result.timings['search'] / wall:.0f}% |"]
    for i, stage in enumerate(schedule.stages):
        t = result.timings[f"stage{i + 1}"]
        open_groups = groups if stage.ft_num is None else min(stage.ft_num, groups)
        lines.append(f"| stage {i + 1} | {stage.iterations} | {open_groups} of {groups} | {t:.2f} | "
                     f"{1e3 * t / max(1, stage.iterations):.1f} | {100 * t / wall:.0f}% |")
    rest = wall - sum(result.timings.values())
    lines.append(f"| set-up and results (target features, copies) | - | - | {rest:.2f} | - | {100 * rest / wall:.0f}% |")
    lines.append(f"| **total** | {schedule.total_iterations} | | **{wall:.2f}** | | |")
    return lines, wall


def thin_prior(prior: Prior, channels: int = 8) -> Prior:
    """The prior's architecture with random weights and its narrowest layers ``channels`` wide (8: the least
    that keeps one channel in attention's projections): the same operators as the prior, nearly no arithmetic."""
    config = prior.G.config
    g_last = prior.G.output_layer[0].gain.numel()
    d_first = prior.D.blocks[0][0].conv1.out_channels
    thin = dataclasses.replace(config, G_ch=math.ceil(channels * config.G_ch / g_last),
                               D_ch=math.ceil(channels * config.D_ch / d_first))
    return Prior(name=f"{prior.name} (thin)", G=Generator(thin).eval(), D=Discriminator(thin).eval(),
                 class_names=prior.class_names, card={})


def fully_open_schedule(steps: int) -> Schedule:
    """``steps`` fully-open optimisation steps with the D-feature loss and no latent search."""
    return Schedule("profile", (Stage(steps, 5e-5, 1e-3, None, 1.0, 7, 1.0, 0.0, False),), n_candidates=0)


def fully_open_run(prior: Prior, batch: int, steps: int) -> Callable[[], None]:
    """A reconstruction of ``batch`` zero images (grayscale observations) by ``steps`` fully-open optimisation
    steps with the D-feature loss and no latent search: what the timings of a step run."""
    size = (prior.resolution, prior.resolution)
    deg = parse_degradation("gray", size=size)
    obs = deg.observe(torch.zeros(1, 3, *size))
    rec = DGPReconstructor(prior, fully_open_schedule(steps))

    def run() -> None:
        if batch == 1:
            rec(obs, deg, 0)
        else:
            rec.batch([obs] * batch, deg, [0] * batch)

    return run


def overhead_floor(prior: Prior, steps: int, rounds: int = 5) -> tuple[float, float]:
    """Median seconds per single-image step (set-up excluded) of the prior and of its :func:`thin_prior`, in
    interleaved rounds.

    The thin model issues the same operators with almost no arithmetic, so its step time is what issuing
    them costs (Python, dispatch, autograd, allocation, thread wake-ups): a floor no smaller kernel can lower.
    """
    thin = thin_prior(prior)
    full_times, thin_times = [], []
    for _ in range(rounds):
        full_times.append(engine_step_seconds(prior, 1, steps))
        thin_times.append(engine_step_seconds(thin, 1, steps))
    return statistics.median(full_times), statistics.median(thin_times)


def group_runner(prior: Prior, batch: int, steps: int, shared: bool = False) -> Callable[[], float]:
    """A function that tunes one group of ``batch`` images by ``steps`` fully-open optimisation steps on the
    current threads and returns the wall seconds of the steps (set-up excluded). Call it while ``prior.D`` is a
    constant network (:func:`constant_network`), as reconstructions run D.

    Each image has its own generator (:class:`StackedGenerators`, the group ``DGPReconstructor.batch`` runs in
    each of its threads), or, with ``shared``, all images go through one generator (:class:`TunedGenerator` on
    the batch): no per-image weights, so no grouped convolutions, one spectral norm per layer and one Adam
    state, which is less work than any engine that tunes a generator per image can do.
    """
    size = (prior.resolution, prior.resolution)
    deg = parse_degradation("gray", size=size)
    objective = Objective(prior.D, deg.lift(deg.observe(torch.zeros(batch, 3, *size)), size))
    ids = torch.zeros(batch, dtype=torch.long)
    schedule = fully_open_schedule(steps)
    kind = TunedGenerator if shared else StackedGenerators

    def run() -> float:
        tuned = kind(prior.G, ids, False, False)
        z = torch.zeros(batch, prior.G.dim_z, requires_grad=True)
        start = time.perf_counter()
        run_stages(tuned, z, objective, lambda x: deg.lift(deg(x), size), schedule, None)
        return time.perf_counter() - start

    return run


def in_threads(run: Callable[[], float], count: int) -> float:
    """The largest result of ``count`` calls of ``run`` side by side, each in a thread of its own on one
    intra-op thread (as the engine runs its groups)."""
    results: list[float] = []

    def work() -> None:
        torch.set_num_threads(1)
        results.append(run())

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(results)


def group_step_seconds(prior: Prior, batch: int, steps: int, shared: bool, side_by_side: int = 1) -> float:
    """Wall seconds per step of one group (:func:`group_runner`) on the current threads, after a warm-up run;
    with ``side_by_side`` groups, the slowest of that many run side by side (:func:`in_threads`). Set-up
    excluded: the difference between runs of ``steps + 1`` steps and of 1 step (the first step records the
    forward passes, :mod:`dgp.tracing`)."""
    with constant_network(prior.D):
        one, more = group_runner(prior, batch, 1, shared), group_runner(prior, batch, steps + 1, shared)

        def timed(run: Callable[[], float]) -> float:
            return run() if side_by_side == 1 else in_threads(run, side_by_side)

        timed(one)  # warm-up
        return max(0.0, timed(more) - timed(one)) / steps


def engine_step_seconds(prior: Prior, batch: int, steps: int) -> float:
    """Wall seconds per fully-open step of ``batch`` images through ``DGPReconstructor`` (one image: the lean
    path; more: the batched engine, one group per thread), set-up excluded: the difference between runs of
    ``steps + 1`` steps and of 1 step."""
    one_step, more_steps = fully_open_run(prior, batch, 1), fully_open_run(prior, batch, steps + 1)
    one_step()  # warm-up
    start = time.perf_counter()
    one_step()
    middle = time.perf_counter()
    more_steps()
    return max(0.0, (time.perf_counter() - middle) - (middle - start)) / steps


def batch_bound(prior: Prior, batch: int, steps: int, rounds: int = 5) -> dict[str, list[float]]:
    """Seconds per step, in interleaved rounds: one image and ``batch`` images at once on all threads, the
    batch's largest group (the engine splits a batch into one group per thread) alone on one thread, stacked
    and shared, and the same group of :func:`thin_prior` alone and as many side by side as there are threads
    (what issuing the operators costs, and what running that side by side adds)."""
    threads = torch.get_num_threads()
    group = math.ceil(batch / threads)
    thin = thin_prior(prior)
    times: dict[str, list[float]] = {"single": [], "batch": [], "stacked": [], "shared": [], "thin": [],
                                     "thin_side_by_side": []}
    for _ in range(rounds):
        times["single"].append(engine_step_seconds(prior, 1, steps))
        times["batch"].append(engine_step_seconds(prior, batch, steps))
        torch.set_num_threads(1)
        try:
            times["stacked"].append(group_step_seconds(prior, group, steps, shared=False))
            times["shared"].append(group_step_seconds(prior, group, steps, shared=True))
            times["thin"].append(group_step_seconds(thin, group, steps, shared=False))
            times["thin_side_by_side"].append(group_step_seconds(thin, group, steps, shared=False,
                                                                 side_by_side=threads))
        finally:
            torch.set_num_threads(threads)
    return times


def throughput_bound(prior: Prior, group: int, steps: int, rounds: int = 3) -> dict[str, float]:
    """One group of ``group`` images alone on one thread (the unit the engine runs on each core), set-up
    excluded as differences of a ``steps + 1``-step and a 1-step run, medians of ``rounds`` rounds: seconds
    per step without the profiler, the convolution operators' own seconds per step under it (forward and
    backward), the conv peak of one thread (``speed.py``'s convolution), and the FLOPs of a step (counted, as
    ``speed.py`` counts them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    walls, convs, peaks = [], [], []
    try:
        for _ in range(rounds):
            walls.append(group_step_seconds(prior, group, steps, shared=False))
            conv = []
            with constant_network(prior.D):
                for n in (1, steps + 1):
                    run = group_runner(prior, group, n)
                    run()  # warm-up
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        run()
                    conv.append(sum(e.self_cpu_time_total for e in prof.key_averages()
                                    if categorise(e.key).startswith("convolution")) / 1e6)
            convs.append((conv[1] - conv[0]) / steps)
            peaks.append(conv_peak_gflops(1.0))
    finally:
        torch.set_num_threads(threads)
    return {"step": statistics.median(walls), "conv": statistics.median(convs),
            "flops": group * flops_per_iteration(prior), "peak": statistics.median(peaks)}


def throughput_section(bound: dict[str, float], group: int, threads: int) -> list[str]:
    """Table and reading of :func:`throughput_bound`: what the 40% target asks of the engine's groups."""
    rate = bound["flops"] / bound["step"] / 1e9
    conv_rate = bound["flops"] / bound["conv"] / 1e9
    share = bound["conv"] / bound["step"]
    peak = bound["peak"]
    lines = [f"| a group of {group} images alone, 1 thread, each with its own generator | value |", "| --- | --- |",
             f"| one step (set-up excluded) | {1e3 * bound['step']:.1f} ms |",
             f"| FLOPs of the step (counted) | {bound['flops'] / 1e9:.2f} GFLOP |",
             f"| achieved | {rate:.1f} GFLOP/s, {100 * rate / peak:.1f}% of one thread's conv peak "
             f"({peak:.1f} GFLOP/s) |",
             f"| the convolutions' own time (forward and backward, under the profiler) | "
             f"{1e3 * bound['conv']:.1f} ms, {100 * share:.0f}% of the step |",
             f"| the rate if nothing but the convolutions took time | {conv_rate:.1f} GFLOP/s, "
             f"{100 * conv_rate / peak:.0f}% of the peak |"]
    fraction, conv_fraction = rate / peak, conv_rate / peak
    allowed = conv_fraction / 0.4 - 1  # the rest of a step, as a fraction of the convolutions' time, at 40%
    rest = (f"the rest of the step (element-wise passes, spectral-norm products, Adam, operator overhead), now "
            f"{100 * (1 - share) / share:.0f}% of the convolutions' time, would have to fall to "
            f"{100 * allowed:.0f}% of it" if allowed > 0 else
            "that is out of reach even if everything else took no time")
    reading = (
        f"The engine runs a large batch as {threads} such groups, one per core: on {threads} cores that did not "
        f"slow each other it would run at {100 * fraction:.1f}% of {threads} times one thread's conv peak (a "
        "bound: busy cores share memory bandwidth). The 40% target asks "
        f"{100 * (0.4 / fraction - 1):.0f}% more of every step. The convolutions alone, at the rate they run "
        f"inside the step, would give {100 * conv_fraction:.0f}% if everything else took no time; to reach 40%, "
        f"{rest}.")
    return lines + ["", reading]


class _OperatorCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (forward, backward and optimizer alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


def operators_per_step(prior: Prior, batch: int, steps: int = 3) -> float:
    """ATen operators dispatched per fully-open optimisation step of ``batch`` images: the difference of a
    ``steps``-step and a 1-step run, so that set-up, the first step's optimizer state and read-backs cancel.
    Unlike times, this count does not depend on the machine's load."""
    counts = []
    for n in (1, steps):
        run = fully_open_run(prior, batch, n)
        with _OperatorCounter() as counter:
            run()
        counts.append(counter.count)
    return (counts[1] - counts[0]) / (steps - 1)


Breakdown = tuple[dict[str, float], float, float, float, list[tuple[str, str, float]]]


def operator_breakdown(prior: Prior, batch: int, steps: int, top: int = 8) -> Breakdown:
    """Profile ``steps`` fully-open optimisation steps on ``batch`` images.

    Returns operator self time per category (seconds), their sum, the wall time of the same steps run
    without the profiler, the time inside the optimizers' ``step`` (all their operators), and the ``top``
    costliest operators by name and input shapes (seconds).
    """
    run = fully_open_run(prior, batch, steps)
    run()  # warm-up
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    totals: dict[str, float] = defaultdict(float)
    optimizer = 0.0
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn"):
            totals[categorise(event.key)] += event.self_cpu_time_total / 1e6
        elif event.key.startswith("Optimizer.step#"):
            optimizer += event.cpu_time_total / 1e6
    by_shape = [(e.key, " ".join(str(tuple(s)) for s in e.input_shapes[:2] if s), e.self_cpu_time_total / 1e6)
                for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    costliest = sorted(by_shape, key=lambda item: -item[2])[:top]
    return dict(totals), sum(totals.values()), wall, optimizer, costliest


def breakdown_table(totals: dict[str, float], op_time: float, wall: float, optimizer: float,
                    costliest: list[tuple[str, str, float]], steps: int, batch: int) -> list[str]:
    lines = ["| category | ms per step | share of operator time |", "| --- | --- | --- |"]
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {1e3 * seconds / steps:.1f} | {100 * seconds / op_time:.0f}% |")
    lines.append(f"| **operators in all (under the profiler)** | **{1e3 * op_time / steps:.1f}** | 100% |")
    lines.append(f"| the two Adam steps, all their operators (spread over the categories above) | "
                 f"{1e3 * optimizer / steps:.1f} | {100 * optimizer / op_time:.0f}% |")
    lines.append(f"| wall time per step without the profiler ({batch} image{'s' if batch > 1 else ''}) | "
                 f"{1e3 * wall / steps:.1f} | |")
    lines += ["", "The costliest operators (by input shapes; grouped convolutions show the batch folded into the "
              "channels, as the batched engine runs them):", "", "| operator | input shapes | ms per step |",
              "| --- | --- | --- |"]
    lines += [f"| `{name}` | {shapes} | {1e3 * seconds / steps:.1f} |" for name, shapes, seconds in costliest]
    return lines


def reading(single: Breakdown, batched: Breakdown, batch: int, floor: tuple[float, float],
            operators: tuple[float, float]) -> list[str]:
    """Plain-language conclusions drawn from this run's figures."""
    def parts(result: Breakdown) -> tuple[float, float, float]:
        totals, op_time, wall = result[:3]
        conv = totals.get("convolution forward", 0.0) + totals.get("convolution backward", 0.0)
        return conv / op_time, max(0.0, wall - op_time) / wall, wall
    conv1, over1, wall1 = parts(single)
    convb, overb, wallb = parts(batched)
    return [
        f"- One image: convolutions are {100 * conv1:.0f}% of the operator time; the rest is many small "
        f"operators (element-wise arithmetic, views, the spectral-norm matrix products), and about "
        f"{100 * over1:.0f}% of the wall time is outside operators (Python, autograd, dispatch). At 32 px the "
        "layers are tiny (64 channels, 4x4 to 32x32), so per-operator overhead is a large part of a step: the "
        f"same architecture with 8-channel layers (random weights, the same operators) takes "
        f"{1e3 * floor[1]:.1f} ms a step against {1e3 * floor[0]:.1f} ms for the prior (medians of interleaved "
        f"rounds), so about {100 * floor[1] / floor[0]:.0f}% of a single-image step is the cost of issuing "
        "operators, not arithmetic (both run the forward passes of G and D replayed from recordings, "
        "`dgp.tracing`, which issue them without Python). Faster kernels cannot lower that floor; fewer "
        f"operators, or compiling the step, can. A single-image step dispatches {operators[0]:,.0f} ATen "
        f"operators (forward, backward and both Adam steps; {operators[1]:,.0f} for {batch} images at once; "
        "counted with eager forward passes, as a recording is not replayed under the counter), a count that "
        "does not depend on the machine's load.",
        f"- {batch} images at once: convolutions grow to {100 * convb:.0f}% of the operator time and the "
        f"overhead outside operators falls to {100 * overb:.0f}%; a step of the batch costs "
        f"{wallb / wall1:.1f}x a single-image step for {batch}x the work. The convolution backward pass "
        "(grouped convolutions: every image has its own generator weights) is the largest single item. What no "
        "image can change (the untuned output layer, spectral- and batch-norm buffers) is shared, so it runs as "
        "an ordinary batched layer, and 1x1 convolutions with per-image weights run as batched matrix products. "
        "This profiles the batch as `DGPReconstructor.batch` runs it: one group per thread, each on one "
        "intra-op thread (README), which the small layers use better; operator times are summed over the "
        "threads the profiler records, so with both groups recorded they can exceed the wall time (the "
        "overhead share then reads 0%).",
        "- The layers compute BigGAN's values in a cheaper order (README, 'Same values, less work'): G's "
        "upsample-then-convolve at 32 px runs as one stride-2 transposed convolution of the 16-px image with "
        "a 4x4 kernel, D's convolve-then-pool as one stride-2 convolution; spectral norm's power iteration "
        "is shared by same-shaped small weights and linear layers scale their output by 1/sigma rather than "
        "their weight; inside a reconstruction D and G's untuned layers are constants (no parameter gradients) "
        "and zero-weight loss terms stay out of the graph. The process keeps freed memory for reuse "
        "(`dgp.allocator`), which removes the page faults of the batch's multi-megabyte temporaries.",
        "- Every stage costs the same per step whatever the number of open blocks: as in the released code, "
        "closed blocks keep learning rate 0 but still get gradients and Adam moment updates, so the state "
        "they bring into later stages matches the original. Skipping them would be faster but would change "
        "results.",
        "- The latent search is a small share (scoring candidates in batches under no-grad); the set-up "
        "(target features, copies of G) is negligible.",
    ]


def bound_section(times: dict[str, list[float]], batch: int, threads: int) -> list[str]:
    """Table and reading of :func:`batch_bound`: what the 3x batch target asks of a step of the batch."""
    group = math.ceil(batch / threads)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    rng = {k: f"{1e3 * min(v):.1f}-{1e3 * max(v):.1f}" for k, v in times.items()}
    limit = batch / 3 * med["single"]
    lines = ["| one optimisation step (set-up excluded) | ms | range |", "| --- | --- | --- |",
             f"| one image, lean path, {threads} thread{'s' if threads > 1 else ''} | {med['single']:.1f} | "
             f"{rng['single']} |",
             f"| {batch} images at once: the engine, {threads} groups of {group} side by side | "
             f"{med['batch']:.1f} | {rng['batch']} |",
             f"| the longest step at which {batch} images at once reach 3x one image at a time | {limit:.1f} | |",
             f"| one group of {group} alone, 1 thread, each image with its own generator (as in the engine) | "
             f"{med['stacked']:.1f} | {rng['stacked']} |",
             f"| one group of {group} alone, 1 thread, all through one shared generator (no per-image weights) | "
             f"{med['shared']:.1f} | {rng['shared']} |",
             f"| the same group of the 8-channel model (the prior's operators, almost no arithmetic), alone | "
             f"{med['thin']:.1f} | {rng['thin']} |",
             f"| {threads} such groups side by side, each in a thread of its own (as the engine runs them) | "
             f"{med['thin_side_by_side']:.1f} | {rng['thin_side_by_side']} |"]
    slowdown = med["batch"] / med["stacked"]
    added, thin_added = med["batch"] - med["stacked"], med["thin_side_by_side"] - med["thin"]
    together = (f"costs {100 * (slowdown - 1):.0f}% ({added:.1f} ms a step)" if slowdown >= 1.005 else
                f"cost nothing measurable in this run ({100 * (slowdown - 1):+.0f}%, within the rounds' spread)")
    thin_reading = (
        f"The 8-channel model, which issues the same operators with almost no arithmetic or memory traffic, "
        f"takes {med['thin']:.1f} ms a step for a group alone and {med['thin_side_by_side']:.1f} ms with "
        f"{threads} groups side by side: {thin_added:+.1f} ms a step that come from issuing operators on "
        "several threads of one process at once, not from arithmetic or memory traffic: the threads take turns "
        "at Python's global interpreter lock, which a thread holds while it issues an operator from Python "
        "(the loss, the optimizer, the backward pass of the stacked pass's Python-defined autograd functions; "
        "the forward passes of G and D are replayed from recordings without it, `dgp.tracing`) and takes back "
        "after each. Worker processes, one lock each, do not contend (docs/speed-notes.md).")
    reading = (
        f"{batch} images at once reach 3x the images/s of one image at a time when a step of the batch takes "
        f"at most {batch}/3 x one image's step, here {limit:.1f} ms; the engine's step took {med['batch']:.1f} ms, "
        f"{batch * med['single'] / med['batch']:.2f}x one image at a time (set-up excluded). Its {threads} groups "
        f"run side by side, each on a core of its own; one group alone takes {med['stacked']:.1f} ms, so running "
        f"them together {together}. "
        f"Through one shared generator a group takes {med['shared']:.1f} ms: the per-image weights (grouped "
        "convolutions, a spectral norm and an Adam state per image, per-image products in the conditional "
        f"batch norms) cost {100 * (1 - med['shared'] / med['stacked']):.0f}% of its step. The shared "
        "generator is not a way to run DGP (it cannot tune each image's own copy of G); it bounds what any engine "
        f"that does can reach here: {batch * med['single'] / (med['shared'] * slowdown):.2f}x one image at a time "
        f"with the measured side-by-side slow-down, {batch * med['single'] / med['shared']:.2f}x without any.")
    return lines + ["", reading, "", thin_reading]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="cifar10", help="prior name or folder (default: the shipped one)")
    parser.add_argument("--preset", default="colorization", choices=sorted({p for _, p in TASKS.values()}))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched profile")
    parser.add_argument("--steps", type=int, default=20, help="steps per operator profile")
    parser.add_argument("--large-group", type=int, default=32,
                        help="group size of the throughput bound (64 images on 2 threads: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/profile.md"))
    args = parser.parse_args()
    keep_freed_memory()  # as the dgp command does
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)

    stages, wall = stage_table(prior, args.preset, args.seed)
    print("\n".join(stages))
    single = operator_breakdown(prior, 1, args.steps)
    batched = operator_breakdown(prior, args.batch, args.steps)
    floor = overhead_floor(prior, args.steps)
    operators = (operators_per_step(prior, 1), operators_per_step(prior, args.batch))
    bound = batch_bound(prior, args.batch, args.steps)
    large_steps, large_rounds = 5, 3
    large = throughput_bound(prior, args.large_group, large_steps, large_rounds)
    text = ["# Profile of one reconstruction", "",
            f"Measured by `benchmarks/profile_reconstruction.py --preset {args.preset} --batch {args.batch}` on "
            f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, prior `{prior.name}` ({prior.resolution} px). The observation is a random "
            "image: timings do not depend on its content.", "",
            f"## The {args.preset} preset, phase by phase", "", *stages, "",
            "## One optimisation step, by operator category", "",
            f"All blocks open, D-feature loss, {args.steps} steps profiled with `torch.profiler` (operators' own "
            "CPU time, summed over the threads it records). For one thread, the difference between the wall "
            "time and the operator time is Python, autograd and dispatch overhead.", "",
            "### Single image (lean path)", "", *breakdown_table(*single, args.steps, 1), "",
            f"### {args.batch} images at once (batched path, per step of the whole batch)", "",
            *breakdown_table(*batched, args.steps, args.batch), ""]
    text += ["## What bounds the batched engine", "",
             "Medians of 5 interleaved rounds, set-up excluded (steps timed as the difference of a long and a "
             "1-step run); a group is the unit `DGPReconstructor.batch` "
             "runs in each thread.",
             "", *bound_section(bound, args.batch, torch.get_num_threads()), ""]
    threads = torch.get_num_threads()
    text += ["## What bounds throughput at large batches", "",
             f"What the 40% target asks: a large batch runs as one group per core ({args.large_group * threads} "
             f"images as {threads} groups of {args.large_group}); measured on one such group alone, medians of "
             f"{large_rounds} rounds (steps as the difference of a {large_steps + 1}-step and a 1-step run).", "",
             *throughput_section(large, args.large_group, threads), ""]
    text += ["## Reading", "", *reading(single, batched, args.batch, floor, operators), ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text))
    print("\n".join(text[-30:]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
