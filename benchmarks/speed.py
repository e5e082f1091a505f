"""Speed of the reconstruction engine: lean, batched and naive reference paths, against the conv peak.

Usage::

    .venv/bin/python benchmarks/speed.py [--prior cifar10] [--threads N] [--quick] [--repeats 3]
        [--imagenet-repeats 2] [--long-iterations N] [--system-allocator] [-o docs/performance.md]

Prints, for the shipped prior and for the 128-pixel ImageNet BigGAN architecture with random weights:
ms per iteration (a step of a single image, lean and reference loops, set-up excluded), the set-up, images per
second for batch sizes 1, 4, 16, 64 (of whole reconstructions, and of their steps alone; the largest batch also over
one reconstruction of a preset's length, ``--long-iterations``), latent-search time for
500 candidates, peak resident memory, FLOPs per iteration and of a reconstruction's set-up (counted by
``torch.utils.flop_counter``), the achieved GFLOP/s and its fraction of this machine's convolution peak
(measured in the same run), and the memory bandwidth in each round. Writes a Markdown report and, when
matplotlib is installed, a throughput plot.

On a shared machine a run can slow down for seconds at a time, so the single-image, reference-loop and batched
timings are taken in interleaved rounds (``--repeats`` for the shipped prior, ``--imagenet-repeats`` for the
128-px model; every path and batch size once a round, so a slow spell hits all of them alike) and reported as
medians, with the range; the colorization preset is the median of up to 3 runs. The conv peak moves as much
(250 to 390 GFLOP/s within an hour on 2026-12-02), so it is measured at the start and once a round, reported
as the median, and each batch size's fraction of it is also taken against its own round's peak. The process
keeps freed memory for reuse as the ``dgp`` command does (:mod:`dgp.allocator`); ``--system-allocator``
measures with glibc's defaults instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from dgp.allocator import keep_freed_memory
from dgp.degradations import Degradation, parse_degradation
from dgp.pipeline import default_schedule
from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.registry import Prior, load_prior
from dgp.reconstruct import DGPReconstructor
from dgp.reference import reference_reconstruct
from dgp.schedule import PRESETS, Schedule, Stage


def cpu_name() -> str:
    """The processor's model name as Linux reports it (``/proc/cpuinfo``), else the platform's machine type:
    figures from different machines are not comparable, and the project's machines change between runs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conv_peak_gflops(seconds: float = 3.0) -> float:
    """Sustained GFLOP/s of a large 3x3 convolution (forward), this machine's practical peak."""
    x = torch.randn(16, 128, 32, 32)
    w = torch.randn(128, 128, 3, 3)
    flops = 2 * 16 * 128 * 128 * 9 * 32 * 32
    torch.nn.functional.conv2d(x, w, padding=1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.conv2d(x, w, padding=1)
        n += 1
    return flops * n / (time.perf_counter() - start) / 1e9


def memory_gbps(seconds: float = 1.0) -> float:
    """Sustained GB/s (bytes read and written) of an element-wise sum of two 64 MiB tensors into a third, far
    beyond the cache share of this virtual machine: the rate that bounds a large batch's element-wise passes.
    It is measured beside the conv peak, which is compute-bound, to tell which of the two a slow spell of the
    shared host slows."""
    n = 16 * 2**20  # float32 elements: 64 MiB a tensor
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    torch.add(a, b, out=c)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.add(a, b, out=c)
        count += 1
    return 3 * 4 * n * count / (time.perf_counter() - start) / 1e9


def one_stage(iterations: int) -> Schedule:
    """A single fully-open stage with the colorization loss (D features, no MSE), no latent search."""
    return Schedule("bench", (Stage(iterations, 5e-5, 1e-3, None, 1.0, 7, 1.0, 0.0, False),), n_candidates=0)


class _NoModules:
    """Stands in for FlopCounterMode's module tracker (its backward hooks break on frozen sub-modules)."""

    parents = {"Global"}

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _im2col_conv_flops(x_shape: list[int], w_shape: list[int], *args: object, out_shape: list[int],
                       **kwargs: object) -> int:
    """FLOPs of PyTorch's im2col convolution (``aten._slow_conv2d_forward``), which the flop counter's own
    formula for it reads with the wrong arguments (torch 2.13)."""
    return conv_flop_count(x_shape, w_shape, out_shape)


def _im2col_conv_backward_flops(grad_shape: list[int], x_shape: list[int], w_shape: list[int], kernel_size: object,
                                stride: object, padding: object, output_mask: list[bool], **kwargs: object) -> int:
    """FLOPs of its backward pass, which the flop counter does not count: as many as the forward pass for each
    gradient computed (input and weight)."""
    return conv_flop_count(x_shape, w_shape, grad_shape) * sum(map(bool, output_mask[:2]))


def _observation(prior: Prior) -> tuple[Degradation, Tensor, Tensor]:
    """The benchmark's degradation (grayscale), a clean all-zero image and its observation."""
    deg = parse_degradation("gray", size=(prior.resolution, prior.resolution))
    clean = torch.zeros(1, 3, prior.resolution, prior.resolution)
    return deg, clean, deg.observe(clean)


def flops_per_iteration(prior: Prior, path: str = "lean") -> float:
    """FLOPs of one optimisation step (G forward, degradation, D forward, backward) of ``path`` (``"lean"``
    or ``"reference"``: the naive loop, which also recomputes the target's features every step and computes
    the gradients of D's weights and of G's untuned ones, as the original did); see :func:`counted_flops`."""
    return counted_flops(prior, path)[0]


def counted_flops(prior: Prior, path: str = "lean") -> tuple[float, float]:
    """``(FLOPs of a step, FLOPs of the rest of a reconstruction)`` of one image on ``path``, counted by
    PyTorch over whole reconstructions of 1 and 2 steps: a step is their difference (so that set-up work
    cancels out), the rest the 1-step run less a step. For the lean path the rest is the target's features (a
    pass of D) and the final image (a pass of G); the benchmark's runs have no latent search."""
    deg, clean, obs = _observation(prior)
    totals = []
    for steps in (1, 2):
        counter = FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten._slow_conv2d_forward: _im2col_conv_flops,
            torch.ops.aten._slow_conv2d_backward: _im2col_conv_backward_flops})
        counter.mod_tracker = _NoModules()
        with counter:
            if path == "reference":
                reference_reconstruct(prior, one_stage(steps), obs, deg, 0, torch.Generator().manual_seed(0),
                                      reference=clean)
            else:
                DGPReconstructor(prior, one_stage(steps))(obs, deg, 0)
        totals.append(float(counter.get_total_flops()))
    step = totals[1] - totals[0]
    return step, max(totals[0] - step, 0.0)


def run_seconds(prior: Prior, path: str, batch: int, iterations: int) -> float:
    """Wall seconds of one whole reconstruction of ``iterations`` fully-open steps, set-up included: ``path``
    is ``"lean"`` (``DGPReconstructor``; with ``batch`` > 1 its batched engine, as the ``dgp`` command runs it)
    or ``"reference"`` (the naive loop, one image, metrics and target features every step)."""
    deg, clean, obs = _observation(prior)
    start = time.perf_counter()
    if path == "reference":
        reference_reconstruct(prior, one_stage(iterations), obs, deg, 0, torch.Generator().manual_seed(0),
                              reference=clean)
    elif batch == 1:
        DGPReconstructor(prior, one_stage(iterations))(obs, deg, 0)
    else:
        DGPReconstructor(prior, one_stage(iterations)).batch([obs] * batch, deg, [0] * batch)
    return time.perf_counter() - start


@dataclasses.dataclass
class Timing:
    """One round's timing of a path: a whole ``iterations``-step reconstruction (``whole``, seconds), and
    from it and a 1-step run, the seconds of a step alone (``step``) and of the set-up (``setup``: copies of G,
    recordings, target features, results)."""

    whole: float
    step: float
    setup: float


def time_path(prior: Prior, path: str, batch: int, iterations: int) -> Timing:
    """Times ``path`` (:func:`run_seconds`) after a 1-step warm-up: a 1-step run, then an ``iterations``-step
    run; a step is their difference over ``iterations - 1`` steps."""
    if iterations < 2:
        raise ValueError("timing a step alone needs runs of at least 2 iterations")
    run_seconds(prior, path, batch, 1)  # warm-up: oneDNN builds its kernels for new shapes on first use
    one = run_seconds(prior, path, batch, 1)
    whole = run_seconds(prior, path, batch, iterations)
    step = max(whole - one, 0.0) / (iterations - 1)
    return Timing(whole, step, max(one - step, 0.0))


def search_seconds(prior: Prior, candidates: int, reference: bool = False) -> float:
    """Seconds of the latent search over ``candidates`` (batched, or one at a time as the original)."""
    deg, _, obs = _observation(prior)
    schedule = dataclasses.replace(one_stage(1), n_candidates=candidates)
    start = time.perf_counter()
    if reference:
        reference_reconstruct(prior, schedule, obs, deg, None, torch.Generator().manual_seed(0))
    else:
        DGPReconstructor(prior, schedule)(obs, deg, None)
    return time.perf_counter() - start


def full_preset_seconds(prior: Prior, preset: str) -> float:
    """Wall time of a whole task preset (search + all stages) as the CLI runs it for this prior."""
    deg = parse_degradation("gray", size=(prior.resolution, prior.resolution))
    obs = deg.observe(torch.rand(1, 3, prior.resolution, prior.resolution) * 2 - 1)
    start = time.perf_counter()
    DGPReconstructor(prior, default_schedule(prior, preset))(obs, deg, None)
    return time.perf_counter() - start


def physical_memory_gb() -> float:
    """This machine's physical memory in GiB (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return 0.0


def random_imagenet_128() -> Prior:
    config = BigGANConfig(resolution=128, G_ch=96, D_ch=96, dim_z=120, shared_dim=128, n_classes=1000)
    torch.manual_seed(0)
    return Prior("biggan-imagenet-128 (random weights)", Generator(config).eval(), Discriminator(config).eval(),
                 [str(i) for i in range(1000)])


def measure(prior: Prior, peaks: list[float], batches: list[int], iterations: int, candidates: int,
            reference_iterations: int, full_preset: bool, repeats: int = 1, long_iterations: int = 0) -> dict:
    """Every figure of one prior; the single-image, reference-loop and batched timings are medians of
    ``repeats`` interleaved rounds (:func:`time_path`; one image's batch throughput is the single-image
    path's run), the full colorization preset the median of up to 3 runs.

    Each round also measures the conv peak (appended to ``peaks``), so that every batch size's fraction of
    the peak is also taken against the peak of its own round, seconds apart (``fraction_of_peak_by_round``).
    With ``long_iterations``, the largest batch is also timed once over a whole reconstruction of that many
    iterations (a preset's length, where the set-up weighs far less than in ``iterations``), with a conv
    peak measured before and after it.
    """
    row: dict = {"prior": prior.name, "resolution": prior.resolution, "repeats": repeats, "iterations": iterations}
    singles: list[Timing] = []
    references: list[Timing] = []
    runs: dict[int, list[Timing]] = {b: [] for b in batches}
    round_peaks: list[float] = []
    round_memory: list[float] = []
    for _ in range(repeats):
        singles.append(time_path(prior, "lean", 1, iterations))
        references.append(time_path(prior, "reference", 1, reference_iterations))
        round_peaks.append(conv_peak_gflops(1.0))
        round_memory.append(memory_gbps())
        for b in batches:
            runs[b].append(singles[-1] if b == 1 else time_path(prior, "lean", b, iterations))
    peaks += round_peaks
    steps = [t.step for t in singles]
    reference_steps = [t.step for t in references]
    single, ref = statistics.median(steps), statistics.median(reference_steps)
    (flops, setup_flops), reference_flops = counted_flops(prior), flops_per_iteration(prior, "reference")
    # a whole reconstruction's FLOPs, as its images/s count its whole time: the set-up's and every step's
    whole_flops = setup_flops + flops * iterations
    reference_setup = statistics.median(t.setup for t in references)
    row.update(ms_per_iteration=1e3 * single, ms_per_iteration_range=(1e3 * min(steps), 1e3 * max(steps)),
               setup_seconds=statistics.median(t.setup for t in singles),
               reference_ms_per_iteration=1e3 * ref,
               reference_ms_per_iteration_range=(1e3 * min(reference_steps), 1e3 * max(reference_steps)),
               reference_setup_seconds=reference_setup,
               # one image at a time, as the original restores them: set-up plus ``iterations`` steps
               reference_images_per_second=1 / (reference_setup + iterations * ref),
               speedup=ref / single, gflop_per_iteration=flops / 1e9, setup_gflop=setup_flops / 1e9,
               achieved_gflops=flops / single / 1e9,
               reference_gflop_per_iteration=reference_flops / 1e9,
               reference_achieved_gflops=reference_flops / ref / 1e9)
    whole = {b: [b / t.whole for t in r] for b, r in runs.items()}  # images/s of whole reconstructions
    alone = {b: [b / t.step for t in r] for b, r in runs.items()}  # images/s of the steps alone
    row["images_per_second"] = {b: statistics.median(r) for b, r in whole.items()}
    row["images_per_second_range"] = {b: (min(r), max(r)) for b, r in whole.items()}
    row["step_images_per_second"] = {b: statistics.median(r) for b, r in alone.items()}
    row["setup_seconds_by_batch"] = {b: statistics.median(t.setup for t in r) for b, r in runs.items()}
    if 1 in runs:  # the batch speed-up within each round, where both sizes ran a few seconds apart
        row["speedup_by_round"] = {b: [r / one for r, one in zip(whole[b], whole[1])] for b in batches}
    row["batched_gflops"] = {b: whole_flops * ips / 1e9 for b, ips in row["images_per_second"].items()}
    row["step_gflops"] = {b: flops * ips / 1e9 for b, ips in row["step_images_per_second"].items()}
    row["round_peaks"] = round_peaks
    row["memory_gbps_by_round"] = round_memory
    row["fraction_of_peak_by_round"] = {b: [whole_flops * ips / 1e9 / p for ips, p in zip(r, round_peaks)]
                                        for b, r in whole.items()}
    row["step_fraction_of_peak_by_round"] = {b: [flops * ips / 1e9 / p for ips, p in zip(r, round_peaks)]
                                             for b, r in alone.items()}
    if long_iterations:
        b = max(batches)
        before = conv_peak_gflops(1.0)
        seconds = run_seconds(prior, "lean", b, long_iterations)
        around = [before, conv_peak_gflops(1.0)]
        peaks += around
        row["long_run"] = {"batch": b, "iterations": long_iterations, "seconds": seconds,
                           "gflops": (setup_flops + flops * long_iterations) * b / seconds / 1e9, "peaks": around}
    row["search_seconds"] = search_seconds(prior, candidates)
    row["reference_search_seconds"] = search_seconds(prior, candidates, reference=True)
    if full_preset:
        presets = [full_preset_seconds(prior, "colorization") for _ in range(min(repeats, 3))]
        row["colorization_preset_seconds"] = statistics.median(presets)
        row["colorization_preset_seconds_range"] = (min(presets), max(presets))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def targets(row: dict, peak: float) -> list[str]:
    """The project's speed targets for the shipped prior, checked against this run's figures."""
    ips = row["images_per_second"]
    lines = ["## Targets (shipped prior)", "", "| target | measured | met |", "| --- | --- | --- |"]
    if "colorization_preset_seconds" in row:
        t = row["colorization_preset_seconds"]
        lo, hi = row.get("colorization_preset_seconds_range", (t, t))
        spread = f" (runs: {lo:.1f}-{hi:.1f} s)" if hi > lo else ""
        lines.append(f"| full colorization preset on one image <= 15 s | {t:.1f} s{spread} | "
                     f"{'yes' if t <= 15 else 'no'} |")
    if 16 in ips and 1 in ips:
        ratio = ips[16] / ips[1]
        rounds = row.get("speedup_by_round", {}).get(16, [])
        spread = f" (rounds: {', '.join(f'{r:.2f}x' for r in rounds)})" if len(rounds) > 1 else ""
        lines.append(f"| 16 images at once >= 3x the images/s of one at a time | {ratio:.2f}x{spread} | "
                     f"{'yes' if ratio >= 3 else 'no'} |")
    best = max(row["batched_gflops"].items(), key=lambda kv: kv[1])
    lines.append(f"| batched throughput >= 40% of the conv peak (the run's median peak) | "
                 f"{100 * best[1] / peak:.1f}% (B={best[0]}) | {'yes' if best[1] >= 0.4 * peak else 'no'} |")
    by_round = row.get("fraction_of_peak_by_round", {}).get(best[0], [])
    if len(by_round) > 1:
        paired = statistics.median(by_round)
        lines.append(f"| the same against each round's own peak, median of rounds | {100 * paired:.1f}% (rounds: "
                     f"{', '.join(f'{100 * f:.1f}%' for f in by_round)}) | {'yes' if paired >= 0.4 else 'no'} |")
    step = row.get("step_gflops", {}).get(best[0])
    if step is not None:
        by_round = row["step_fraction_of_peak_by_round"][best[0]]
        lines.append(f"| the same for a step alone, set-up excluded (the run's median peak) | {100 * step / peak:.1f}% "
                     f"(B={best[0]}; against each round's own peak: "
                     f"{', '.join(f'{100 * f:.1f}%' for f in by_round)}) | {'yes' if step >= 0.4 * peak else 'no'} |")
    long = row.get("long_run")
    if long is not None:
        own = long["gflops"] / statistics.median(long["peaks"])
        lines.append(f"| the same for one whole {long['iterations']}-iteration reconstruction (a preset's length; one "
                     f"run, B={long['batch']}, {long['seconds']:.0f} s) | {100 * long['gflops'] / peak:.1f}% "
                     f"({100 * own:.1f}% against the peaks measured before and after it) | "
                     f"{'yes' if long['gflops'] >= 0.4 * peak else 'no'} |")
    lines.append(f"| lean path faster than the naive loop (a step) | {row['speedup']:.2f}x | "
                 f"{'yes' if row['speedup'] > 1 else 'no'} |")
    if 16 in ips and 1 in ips:
        lines += ["", f"Each throughput counts a reconstruction's set-up (copies of G, recordings, target features, "
                  f"results; its time, and the FLOPs of the target's features and the final image) with its "
                  f"{row['iterations']} iterations, which favours the batch, whose set-up is shared "
                  "by its images; a preset runs 250-350 iterations. Set-up excluded, a step of 16 images gives "
                  f"{row['step_images_per_second'][16] / row['step_images_per_second'][1]:.2f}x the images/s of "
                  "one image's step (the tables below give every batch size's step alone); whole colorizations of "
                  "16 images, batched and one at a time, are in [batch-performance.md](batch-performance.md)."]
    if 1 in ips:
        single = row["batched_gflops"][1] / peak
        lines += ["", f"The batch speed-up has a ceiling: one image at a time already runs at {100 * single:.1f}% of "
                  f"the conv peak, so B images at once can be at most {1 / single:.2f}x faster per image even if "
                  f"every FLOP ran at the peak; 3x needs the batch to run at {300 * single:.0f}% of it."]
    return lines + ["", "Where the time goes, stage by stage and by operator: [profile.md](profile.md).", ""]


def report(rows: list[dict], peaks: list[float], threads: int, command: str, allocator: str) -> str:
    repeats = rows[0].get("repeats", 1)
    peak = statistics.median(peaks)
    lines = ["# Performance", "",
             f"Measured by `{command}` on {cpu_name()}, "
             f"{torch.get_num_threads()} torch threads (of {threads} requested), torch {torch.__version__}, "
             f"{allocator}. "
             f"Convolution peak measured in the same run: **{peak:.1f} GFLOP/s** (3x3 conv, 128 channels, 32x32, "
             f"batch 16; median of {len(peaks)} measurements, at the start and in every round, "
             f"{min(peaks):.1f}-{max(peaks):.1f}). An iteration is one optimisation step: G forward, degradation, "
             "D forward, backward, two Adam steps. The GFLOP/s of whole reconstructions count every FLOP they "
             "do: the given number of iterations and the set-up's (the target's features and the final "
             "image). Batches run through `DGPReconstructor.batch` as the `dgp` command runs them: on a "
             "CPU the images are split into one group per torch thread, each tuned in a thread of its own; "
             "one image is the lean single-image path on all threads."
             + " Single-image, reference-loop and batched timings are medians of interleaved rounds ("
             + (f"{repeats} for the first prior, {rows[-1].get('repeats', 1)} for the second" if len(rows) > 1
                else f"{repeats}")
             + "), with the range. Each path is timed by a 1-step and an N-step reconstruction after a 1-step "
             "warm-up: ms per iteration and the columns for a step alone are their difference over N - 1 steps "
             "(set-up excluded), the set-up is the 1-step run less a step (copies of G, recordings, target "
             "features, results), and the images/s of a batch count its whole N-step reconstruction, set-up "
             "included; one image's batch figures are the lean single-image path's runs.", ""]
    lines += targets(rows[0], peak)
    for r in rows:
        lo, hi = r.get("ms_per_iteration_range", (r["ms_per_iteration"],) * 2)
        spread = f" ({lo:.1f}-{hi:.1f})" if r.get("repeats", 1) > 1 else ""
        lo, hi = r.get("reference_ms_per_iteration_range", (r["reference_ms_per_iteration"],) * 2)
        ref_spread = f" ({lo:.1f}-{hi:.1f})" if r.get("repeats", 1) > 1 else ""
        lines += [f"## {r['prior']} ({r['resolution']} px)", "", "| figure | value |", "| --- | --- |",
                  f"| ms per iteration, lean single-image path (a step, set-up excluded) | "
                  f"{r['ms_per_iteration']:.1f}{spread} |",
                  f"| set-up of one image's reconstruction, lean path | {1e3 * r['setup_seconds']:.0f} ms |",
                  f"| ms per iteration, naive reference loop (a step) | {r['reference_ms_per_iteration']:.1f}"
                  f"{ref_spread} |",
                  f"| set-up of one image's reconstruction, naive loop | {1e3 * r['reference_setup_seconds']:.0f} ms |",
                  f"| speed-up of the lean path (a step) | {r['speedup']:.2f}x |",
                  f"| GFLOP per iteration (counted) | {r['gflop_per_iteration']:.3f} |",
                  f"| GFLOP of a reconstruction besides its iterations (counted: the target's features, the final "
                  f"image) | {r['setup_gflop']:.3f} |",
                  f"| GFLOP per iteration, naive loop (counted: it also recomputes the target's features and "
                  f"computes the gradients of D's and G's untuned weights) | "
                  f"{r['reference_gflop_per_iteration']:.3f} |",
                  f"| achieved GFLOP/s, single image | {r['achieved_gflops']:.2f} "
                  f"({100 * r['achieved_gflops'] / peak:.1f}% of peak) |",
                  f"| achieved GFLOP/s, naive loop (its own FLOPs) | {r['reference_achieved_gflops']:.2f} "
                  f"({100 * r['reference_achieved_gflops'] / peak:.1f}% of peak) |",
                  f"| images/s, naive loop, one image at a time ({r['iterations']} iterations: its set-up and "
                  f"steps) | {r['reference_images_per_second']:.3f} |",
                  f"| latent search, {r.get('candidates', 500)} candidates, batched | {r['search_seconds']:.2f} s |",
                  f"| latent search, one at a time (reference) | {r['reference_search_seconds']:.2f} s |"]
        if "colorization_preset_seconds" in r:
            lo, hi = r.get("colorization_preset_seconds_range", (r["colorization_preset_seconds"],) * 2)
            lines.append(f"| full colorization preset (search + stages), median of runs | "
                         f"{r['colorization_preset_seconds']:.1f} s ({lo:.1f}-{hi:.1f}) |")
        memory = r.get("memory_gbps_by_round", [])
        if memory:
            lines.append(f"| memory bandwidth in each round (a sum of 64 MiB tensors; median, range) | "
                         f"{statistics.median(memory):.1f} GB/s ({min(memory):.1f}-{max(memory):.1f}) |")
        lines.append(f"| peak resident memory of the process so far | {r['peak_rss_mb']:.0f} MB |")
        lines += ["", f"| batch size | images/s ({r['iterations']} iterations) | range | speed-up vs B=1 | GFLOP/s | "
                  "% of peak | a step alone: images/s | speed-up vs B=1 | % of peak | set-up s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        base = r["images_per_second"][min(r["images_per_second"])]
        step_base = r["step_images_per_second"][min(r["step_images_per_second"])]
        for b, ips in r["images_per_second"].items():
            g, step_ips = r["batched_gflops"][b], r["step_images_per_second"][b]
            lo, hi = r.get("images_per_second_range", {}).get(b, (ips, ips))
            spread = f"{lo:.3f}-{hi:.3f}" if r.get("repeats", 1) > 1 else "-"
            lines.append(f"| {b} | {ips:.3f} | {spread} | {ips / base:.2f}x | {g:.2f} | {100 * g / peak:.1f}% | "
                         f"{step_ips:.3f} | {step_ips / step_base:.2f}x | {100 * r['step_gflops'][b] / peak:.1f}% | "
                         f"{r['setup_seconds_by_batch'][b]:.2f} |")
        if "batch_note" in r:
            lines += ["", r["batch_note"]]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        bs = list(r["images_per_second"])
        ax.plot(bs, [r["images_per_second"][b] / r["images_per_second"][bs[0]] for b in bs], marker="o",
                label=r["prior"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput relative to B=1")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="cifar10", help="prior name or folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer iterations and batch sizes")
    parser.add_argument("--skip-imagenet", action="store_true", help="only the shipped prior")
    parser.add_argument("--imagenet-candidates", type=int, default=None,
                        help="latent-search candidates for the 128-px model (default 500, 50 with --quick)")
    parser.add_argument("--imagenet-repeats", type=int, default=2,
                        help="interleaved rounds of the 128-px timings (default 2; a step takes seconds)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds of the shipped prior's timings, reported as medians (default 3)")
    parser.add_argument("--long-iterations", type=int, default=None,
                        help="also time one whole reconstruction of the largest batch over this many iterations "
                        "(default: the colorization preset's length, 0 with --quick; 0: skip)")
    parser.add_argument("--system-allocator", action="store_true",
                        help="keep glibc's allocator defaults instead of dgp.allocator.keep_freed_memory()")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    if args.repeats < 1 or args.imagenet_repeats < 1:
        parser.error("--repeats and --imagenet-repeats must be at least 1")
    if args.long_iterations is not None and args.long_iterations < 0:
        parser.error("--long-iterations must be at least 0")
    tuned = False if args.system_allocator else keep_freed_memory()
    allocator = "freed memory kept for reuse (dgp.allocator)" if tuned else "the system allocator's defaults"
    torch.set_num_threads(args.threads)
    peaks = [conv_peak_gflops()]
    print(f"conv peak: {peaks[0]:.1f} GFLOP/s")
    rows = []
    small = load_prior(args.prior)
    batches = [1, 4, 16] if args.quick else [1, 4, 16, 64]
    long_iterations = args.long_iterations
    if long_iterations is None:
        long_iterations = 0 if args.quick else default_schedule(small, "colorization").total_iterations
    rows.append(measure(small, peaks, batches, iterations=10 if args.quick else 30, candidates=500,
                        reference_iterations=5 if args.quick else 15, full_preset=True, repeats=args.repeats,
                        long_iterations=long_iterations))
    print(rows[-1])
    if not args.skip_imagenet:
        big = random_imagenet_128()
        candidates = args.imagenet_candidates or (50 if args.quick else 500)
        # B=16 at 128 px needs more than the 24 GB of RAM here (B=4 takes about 8.5 GB): it is left out
        rows.append(measure(big, peaks, [1, 4], iterations=2 if args.quick else 3, candidates=candidates,
                            reference_iterations=2 if args.quick else 3, full_preset=False,
                            repeats=args.imagenet_repeats))
        rows[-1]["candidates"] = candidates
        rows[-1]["batch_note"] = (
            f"Larger batches are not measured at this resolution: every image tunes its own copy of the "
            f"generator and its Adam state, and with B = 4 the process already peaked at "
            f"{rows[-1]['peak_rss_mb'] / 1024:.1f} GB of this machine's {physical_memory_gb():.0f} GB.")
        print(rows[-1])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = report(rows, peaks, args.threads, " ".join(["benchmarks/speed.py", *sys.argv[1:]]), allocator)
    if plot(rows, args.output.with_name("performance_throughput.png")):
        text += "\n![throughput against batch size](performance_throughput.png)\n"
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
